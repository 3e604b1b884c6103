"""Share of voice: per competitor set and tumbling window, each member brand's share of the set's mentions,
negative mentions and reach.

Competitor sets are named lists of brands in the brands file (`competitor_sets:`, docs/BRANDS.md). A brand's
state lives under its own key, on whichever partition (and worker) the brand hashes to, so a set's members
are spread over partitions. As Kafka Streams would join them, this is a second stage behind a repartition
topic: when the brand monitor closes windows of a member brand, it sends a `ShareContribution` (the closed
windows' counts and how far the brand has closed) to settings.share_topic keyed by set, and the share
agent, which owns each set's partition, keeps one `ShareState` per set and publishes a `ShareOfVoice`
when every member has closed the window. Both steps follow the monitor's commit rule (stream/brands/agent.py).

- A member with no mention in a window counts 0 once it has closed that window: a brand reports its
  progress whenever its windows close, mentions or not.
- A member that has reported nothing yet (no mention since the state began) is waited for
  `share_wait_windows` windows of the others' event time, then listed in `missing`. One that reported
  before is waited for, up to `share_max_pending_windows` windows held open; past that the oldest is
  published with the laggards in `missing`. A member's windows arriving after theirs was published are
  dropped: a published record is final.
- Applying a contribution is idempotent (a window's counts are set, not added; progress only grows; a
  published window is never counted again), so replays after a restart and the monitor's repeated
  sends count once, and the share record of a window is the same each time it is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path

import yaml

from stream.brands.model import (
    BrandShare,
    BrandStats,
    MemberWindow,
    Output,
    ShareContribution,
    ShareOfVoice,
    ShareState,
    Window,
)
from stream.brands.query import BrandCatalog, QuerySyntaxError, mapping_value

MEASURES = ("mentions", "negative", "reach")


class CompetitorSets:
    """Set name -> its member brands (in the file's order), and the sets each brand belongs to."""

    def __init__(self, sets: Mapping[str, Iterable[str]] | None = None) -> None:
        self.sets = {name: tuple(members) for name, members in (sets or {}).items()}
        self._of: dict[str, list[str]] = {}
        for name, members in self.sets.items():
            for brand in members:
                self._of.setdefault(brand, []).append(name)

    def __bool__(self) -> bool:
        return bool(self.sets)

    def of(self, brand: str) -> list[str]:
        return self._of.get(brand, [])

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<brands>") -> CompetitorSets:
        """The file's `competitor_sets:` (none: no sets); every member must be a brand the file defines."""
        defined = BrandCatalog.from_yaml_text(text, source).brand_names
        lines = text.splitlines()

        def fail(message: str, node: yaml.Node) -> QuerySyntaxError:
            mark = node.start_mark
            shown = lines[mark.line] if mark.line < len(lines) else ""
            return QuerySyntaxError(message, mark.line + 1, mark.column + 1, source=source, text=shown)

        node = mapping_value(yaml.compose(text), "competitor_sets")
        if node is None:
            return cls()
        if not isinstance(node, yaml.MappingNode):
            raise fail("competitor_sets must map set names to lists of brands", node)
        sets: dict[str, list[str]] = {}
        for key_node, members_node in node.value:
            name = str(key_node.value)
            if name in sets:
                raise fail(f"competitor set {name!r} is defined twice", key_node)
            if not isinstance(members_node, yaml.SequenceNode) or len(members_node.value) < 2:
                raise fail(f"competitor set {name!r} must list at least two brands", members_node)
            members: list[str] = []
            for item in members_node.value:
                brand = str(item.value)
                if not isinstance(item, yaml.ScalarNode) or brand not in defined:
                    raise fail(f"competitor set {name!r}: {brand!r} is not a brand under `brands:`", item)
                if brand in members:
                    raise fail(f"competitor set {name!r} lists {brand!r} twice", item)
                members.append(brand)
            sets[name] = members
        return cls(sets)

    @classmethod
    def from_yaml(cls, path: Path) -> CompetitorSets:
        return cls.from_yaml_text(path.read_text(encoding="utf-8"), str(path))


def contributions(
    sets: CompetitorSets, before: Mapping[str, int], after: Mapping[str, int], outputs: Iterable[Output]
) -> list[ShareContribution]:
    """What the monitor sends its members' sets after closing windows: `before` and `after` are the members'
    closed_until around the close, `outputs` what it emitted (their tumbling stats are the closed windows)."""
    windows: dict[str, list[MemberWindow]] = {}
    for output in outputs:
        if isinstance(output, BrandStats) and output.window.kind == "tumbling" and sets.of(output.brand):
            counts = MemberWindow(output.window.start, output.posts, output.sentiment.get("negative", 0), output.reach)
            windows.setdefault(output.brand, []).append(counts)
    return [
        ShareContribution(competitor_set=name, brand=brand, closed_until=closed, windows=windows.get(brand, []))
        for brand, closed in after.items()
        if closed > before.get(brand, -1)
        for name in sets.of(brand)
    ]


class ShareAggregator:
    """The share agent's logic over a mapping set -> ShareState (a Faust table in the worker, a dict in tests)."""

    def __init__(
        self,
        sets: CompetitorSets,
        window_s: int,
        wait_windows: int,
        max_pending_windows: int,
        states: MutableMapping[str, ShareState] | None = None,
    ) -> None:
        self.sets = sets
        self.states: MutableMapping[str, ShareState] = {} if states is None else states
        self._window_ms = window_s * 1000
        self._wait_ms = wait_windows * self._window_ms
        self._max_pending = max_pending_windows

    def add(self, contribution: ShareContribution) -> list[ShareOfVoice]:
        name, brand = contribution.competitor_set, contribution.brand
        members = self.sets.sets.get(name)
        if members is None or brand not in members:
            return []  # the set changed since the contribution was sent
        state = self.states.get(name) or ShareState()
        for window in contribution.windows:
            if window.start + self._window_ms > state.published_until:
                state.pending.setdefault(window.start, {})[brand] = window
        state.progress[brand] = max(state.progress.get(brand, contribution.closed_until), contribution.closed_until)
        published = self._publish(name, members, state)
        self.states[name] = state
        return published

    def _publish(self, name: str, members: tuple[str, ...], state: ShareState) -> list[ShareOfVoice]:
        published: list[ShareOfVoice] = []
        for start in sorted(state.pending):
            end = start + self._window_ms
            behind = [b for b in members if state.progress.get(b, end - 1) < end]
            if behind and len(state.pending) <= self._max_pending:
                heard_from = any(b in state.progress for b in behind)
                if heard_from or max(state.progress.values()) < end + self._wait_ms:
                    break
            published.append(self._share(name, members, start, state.pending.pop(start), behind))
            state.published_until = max(state.published_until, end)
        return published

    def _share(
        self, name: str, members: tuple[str, ...], start: int, counts: dict[str, MemberWindow], missing: list[str]
    ) -> ShareOfVoice:
        rows = [counts.get(b) or MemberWindow(start, 0, 0, 0) for b in members]
        totals = {
            "mentions": sum(r.posts for r in rows),
            "negative": sum(r.negative for r in rows),
            "reach": sum(r.reach for r in rows),
        }

        def share(value: int, measure: str) -> float | None:
            return value / totals[measure] if totals[measure] else None

        return ShareOfVoice(
            competitor_set=name,
            window=Window("tumbling", start, start + self._window_ms),
            brands=[
                BrandShare(
                    brand=brand,
                    mentions=r.posts,
                    negative=r.negative,
                    reach=r.reach,
                    mention_share=share(r.posts, "mentions"),
                    negative_share=share(r.negative, "negative"),
                    reach_share=share(r.reach, "reach"),
                )
                for brand, r in zip(members, rows, strict=True)
            ],
            mentions=totals["mentions"],
            negative=totals["negative"],
            reach=totals["reach"],
            missing=missing,
            empty=[m for m in MEASURES if not totals[m]],
        )
