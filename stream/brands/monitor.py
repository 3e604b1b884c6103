"""BrandMonitor: windowed aggregates, spike detection, author escalation and noise control, in event time.

One implementation for the streaming worker (state in Faust tables) and the backtest (state in dicts): the
monitor only reads and writes two mappings, `brands` (brand -> BrandState) and `authors`
("brand\\x1fauthor" -> AuthorState), and never looks at a wall clock. Time is the mentions' created_at:

- `observe(mention)` adds a mention to its windows (tumbling and hopping) and returns noise flags and author
  escalations it caused.
- `advance(now_ms)` closes every window whose end + allowed lateness is at or before `now_ms` (the
  watermark rule) and returns BrandStats for each closed non-empty window plus the alerts it triggered.
  A mention older than its brand's closed windows is late: counted in `BrandState.late`, not aggregated.
  Every `author_sweep_s` it also forgets the brands' authors with no mention in `author_window_s`.

Detection runs on each closed tumbling window, per brand, against an EWMA baseline (mean, variance) of the
previous windows: volume (unflagged posts) and negativity (share of negative posts). A metric is anomalous
when its z-score is >= z_threshold (>= min_volume posts; negativity also needs a minimum rise) for
`confirm_windows` windows in a row, or >= z_immediate in one. Both at once is a crisis. One incident gives
one `firing` alert (an `escalated` one if it later becomes a crisis) and one `resolved` alert after
`resolve_windows` quiet windows; a cooldown follows. Anomalous windows stay out of the baseline (until
an incident has lasted `adapt_after_windows`, when a lasting shift becomes the new normal).

A level that drifts over hours follows that baseline; stream/brands/drift.py holds each window against a
3-hour baseline as well (`negativity_shift` incidents, apart from the bursts'). Every tumbling BrandStats
carries the bands both detectors used (`expected`).

With a story tracker (`stories`, stream/brands/stories.py) the monitor hands it every mention it counts and
every tumbling window it closes, and lets it name the driving stories in each alert.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, MutableMapping
from typing import Literal, Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.brands import noise
from stream.brands.drift import ShiftDetector
from stream.brands.model import (
    Alert,
    AlertKind,
    AuthorEscalation,
    AuthorEvent,
    AuthorState,
    Band,
    BrandState,
    BrandStats,
    Example,
    Expected,
    FlaggedMention,
    Incident,
    NearSignature,
    Output,
    Signal,
    TermLift,
    Window,
    WindowAgg,
    severity_of,
)
from stream.schema import BrandMention

AUTHOR_KEY_SEPARATOR = "\x1f"
LEVELS = ("none", "complaining", "churn_risk")


class MonitorConfig(BaseSettings):
    """Brand monitoring knobs: env vars `SOCIALPULSE_BRANDS_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="SOCIALPULSE_BRANDS_", frozen=True, extra="ignore")

    window_s: int = Field(60, description="Tumbling window length; alerts are decided per tumbling window.")
    hop_size_s: int = Field(300, description="Hopping window length; 0 disables hopping windows.")
    hop_step_s: int = Field(60, description="Hopping window step.")
    allowed_lateness_s: int = Field(10, description="A window closes when event time passes its end plus this.")
    ewma_alpha: float = Field(0.1, description="Baseline EWMA weight of the newest window.")
    warmup_windows: int = Field(15, description="Windows of baseline a brand needs before it can alert.")
    z_threshold: float = Field(3.0, description="z-score that makes a window anomalous.")
    confirm_windows: int = Field(2, description="Consecutive anomalous windows (z >= z_threshold) that alert.")
    z_immediate: float = Field(5.0, description="z-score that alerts from a single window.")
    resolve_z: float = Field(1.5, description="Below this z a window counts as quiet.")
    resolve_windows: int = Field(2, description="Quiet windows in a row that resolve an incident.")
    cooldown_windows: int = Field(10, description="Windows after a resolution before a new incident may open.")
    adapt_after_windows: int = Field(
        30, description="After this long an incident's windows enter the baseline: a lasting shift becomes normal."
    )
    min_volume: int = Field(10, description="Fewest unflagged posts in a window for it to alert.")
    min_negativity_rise: float = Field(0.15, description="Negativity must also exceed its baseline by this.")
    negativity_std_floor: float = Field(0.03, description="Smallest negativity deviation a z-score divides by.")
    shift_recent_s: int = Field(600, description="Time constant of the shift detector's recent negativity level.")
    shift_baseline_s: int = Field(10_800, description="Time constant of the long negativity baseline (hours).")
    shift_warmup_s: int = Field(3600, description="History the long baseline needs before a shift can alert.")
    shift_min_posts: float = Field(50.0, description="Fewest effective posts in the recent level for a shift.")
    shift_z: float = Field(4.0, description="Standard errors the recent level must exceed the long one by.")
    shift_min_rise: float = Field(0.1, description="Share the recent level must also exceed the long one by.")
    shift_confirm_windows: int = Field(5, description="Consecutive windows over both that open a shift.")
    shift_resolve_z: float = Field(2.0, description="A shift window below this z counts as quiet.")
    shift_resolve_rise: float = Field(0.05, description="A shift window with a smaller rise counts as quiet.")
    shift_resolve_windows: int = Field(15, description="Quiet windows in a row that resolve a shift.")
    shift_cooldown_windows: int = Field(60, description="Windows after a shift resolves before another may open.")
    examples: int = Field(3, description="Example posts per list (most followed, most negative) in an alert.")
    example_chars: int = Field(500, description="Example texts are cut to this many characters (the state's bound).")
    window_authors: int = Field(
        512,
        description="Authors a window holds exactly; beyond, unique authors and reach are estimated from a "
        "sample of this size (relative error about 1/sqrt(k)).",
    )
    window_top_authors: int = Field(32, description="Most-followed authors a window sums exactly for its reach.")
    top_terms: int = Field(8, description="Distinguishing terms per alert.")
    window_terms: int = Field(300, description="Terms counted per window (Misra-Gries capacity).")
    baseline_terms: int = Field(1000, description="Terms kept in a brand's term baseline.")
    dedupe_window_s: int = Field(3600, description="How long a text is remembered for (near-)duplicate flags.")
    dedupe_capacity: int = Field(2000, description="Texts remembered per brand for exact duplicates.")
    near_dup_capacity: int = Field(200, description="Signatures remembered per brand for near-duplicates.")
    near_dup_similarity: float = Field(0.5, description="Estimated Jaccard of word 3-shingles that flags.")
    min_followers: int = Field(2, description="Posts with a link from authors with fewer followers are flagged.")
    max_author_posts: int = Field(10, description="Mentions of one brand by one author per rate window.")
    rate_window_s: int = Field(300, description="Window for max_author_posts.")
    author_window_s: int = Field(86_400, description="History that counts towards an author's escalation.")
    author_history: int = Field(50, description="Most events kept per (brand, author).")
    author_sweep_s: int = Field(
        3600, description="How often (event time) authors with no mention in author_window_s are forgotten."
    )
    complaints_to_escalate: int = Field(2, description="Complaints in author_window_s: level complaining.")
    complaints_to_churn: int = Field(3, description="Complaints (or a churn_risk post after one): churn_risk.")
    share_wait_windows: int = Field(
        5,
        description="Share of voice: windows of event time a competitor set waits for a member that has reported "
        "nothing yet before it publishes without it (listed in `missing`).",
    )
    share_max_pending_windows: int = Field(
        60,
        description="Share of voice: windows a set holds open for a lagging member; past it the oldest is "
        "published with the laggards listed in `missing` (the state's bound).",
    )


def sentiment_value(scores: dict[str, float]) -> float:
    return scores.get("positive", 0.0) - scores.get("negative", 0.0)


def author_digest(author: str) -> int:
    """The author's place in a window's AuthorSample: a 64-bit hash, uniform whatever the ids look like."""
    return int.from_bytes(hashlib.blake2b(author.encode(errors="surrogatepass"), digest_size=8).digest(), "big")


def author_key(brand: str, author: str) -> str:
    return f"{brand}{AUTHOR_KEY_SEPARATOR}{author}"


class StoryHooks(Protocol):
    """What the monitor tells the story tracker (stream/brands/stories.py), which keeps its own state."""

    def counted(self, mention: BrandMention, offset: int | None) -> list[Output]:
        """A mention the windows counted (not flagged, late or a repeat)."""

    def closed(self, brand: str, start: int, end: int) -> list[Output]:
        """A tumbling window closed; called before the window's alerts are decided."""

    def explain(self, alert: Alert) -> Alert:
        """The alert naming the stories that drive it."""


class BrandMonitor:
    def __init__(
        self,
        config: MonitorConfig | None = None,
        brands: MutableMapping[str, BrandState] | None = None,
        authors: MutableMapping[str, AuthorState] | None = None,
        stories: StoryHooks | None = None,
    ) -> None:
        self.config = config or MonitorConfig()
        self.stories = stories
        self.brands: MutableMapping[str, BrandState] = {} if brands is None else brands
        self.authors: MutableMapping[str, AuthorState] = {} if authors is None else authors
        c = self.config
        self._window_ms = c.window_s * 1000
        self._hop_size_ms = c.hop_size_s * 1000
        self._hop_step_ms = c.hop_step_s * 1000
        self._lateness_ms = c.allowed_lateness_s * 1000
        self._shift = ShiftDetector(c)

    # ------------------------------------------------------------------------------------ observe

    def observe(self, mention: BrandMention, offset: int | None = None) -> list[Output]:
        """Count one mention; `offset` is its position on the mentions topic (None where there is no topic, as in
        the backtest: then a post already in its author's history is taken as a repeat)."""
        state = self.brands.get(mention.brand)
        t = mention.created_at
        if state is None:
            state = BrandState(mention.brand)
            state.closed_until = t - t % self._window_ms
            if self._hop_size_ms:
                state.hop_closed_until = t - t % self._hop_step_ms
        if offset is not None and offset <= state.applied_offset:
            return []
        author = self.authors.get(author_key(mention.brand, mention.author_id)) or AuthorState()
        # The ingest pipeline delivers at least once: a post it redid comes again at a later offset. Its
        # author's history (author_history events, author_window_s) is where the monitor remembers posts, so
        # the dedupe memory is split by author rather than one list per brand that grows with its volume.
        if any(e.post_id == mention.post_id and (offset is None or e.offset != offset) for e in author.events):
            return []
        if offset is not None:
            state.applied_offset = offset
        if t < state.closed_until:
            state.late += 1
            self.brands[mention.brand] = state
            return []
        outputs: list[Output] = []
        reasons = self._noise(state, author, mention)
        escalation = self._author(author, mention, flagged=bool(reasons), offset=offset)
        self.authors[author_key(mention.brand, mention.author_id)] = author
        if escalation is not None:
            outputs.append(escalation)
        if reasons:
            outputs.append(
                FlaggedMention(
                    brand=mention.brand,
                    post_id=mention.post_id,
                    author_id=mention.author_id,
                    created_at=t,
                    reasons=reasons,
                )
            )
        start = t - t % self._window_ms
        keys = [(f"t:{start}", start, start + self._window_ms)]
        if self._hop_size_ms:
            hop = t - t % self._hop_step_ms
            while hop + self._hop_size_ms > t:
                if hop + self._hop_size_ms > state.hop_closed_until:
                    keys.append((f"h:{hop}", hop, hop + self._hop_size_ms))
                hop -= self._hop_step_ms
        terms = set() if reasons else noise.terms(mention.text)
        digest = author_digest(mention.author_id)
        for key, window_start, window_end in keys:
            self._add(state, key, window_start, window_end, mention, reasons, terms, digest)
        state.max_event_ms = max(state.max_event_ms, t)
        self.brands[mention.brand] = state
        if self.stories is not None and not reasons:
            outputs.extend(self.stories.counted(mention, offset))
        return outputs

    def _noise(self, state: BrandState, author: AuthorState, mention: BrandMention) -> list[str]:
        c, t = self.config, mention.created_at
        reasons: list[str] = []
        normalised = noise.normalise(mention.text)
        horizon = t - c.dedupe_window_s * 1000
        if normalised:
            digest = noise.text_hash(normalised)
            last = state.recent_hashes.pop(digest, None)
            if last is not None and last >= horizon:
                reasons.append("duplicate")
            # Re-inserted last, so the dict stays oldest-first and trimming drops the stalest texts.
            state.recent_hashes[digest] = max(t, last or t)
            while len(state.recent_hashes) > c.dedupe_capacity:
                del state.recent_hashes[next(iter(state.recent_hashes))]
            signature = noise.minhash(normalised)
            recent = [s for s in state.recent_signatures if s.created_at >= horizon]
            similar = noise.best_similarity(signature, [s.signature for s in recent])
            if not reasons and similar >= c.near_dup_similarity:
                reasons.append("near_duplicate")
            recent.append(NearSignature(t, signature))
            state.recent_signatures = recent[-c.near_dup_capacity :]
        if noise.is_link_only(mention.text):
            reasons.append("link_only")
        elif mention.followers < c.min_followers and noise.has_link(mention.text):
            reasons.append("low_followers_link")
        rate_from = t - c.rate_window_s * 1000
        if sum(1 for e in author.events if e.created_at >= rate_from) >= c.max_author_posts:
            reasons.append("high_rate")
        if "spam" in mention.behaviours:
            reasons.append("model_spam")
        return reasons

    def _author(
        self, author: AuthorState, mention: BrandMention, *, flagged: bool, offset: int | None
    ) -> AuthorEscalation | None:
        c, t = self.config, mention.created_at
        if any(e.post_id == mention.post_id for e in author.events):
            return None
        value = sentiment_value(mention.sentiment_scores)
        event = AuthorEvent(
            t,
            mention.post_id,
            value,
            "complaint" in mention.behaviours,
            "churn_risk" in mention.behaviours,
            flagged,
            -1 if offset is None else offset,
        )
        since = t - c.author_window_s * 1000
        author.events = [e for e in author.events if e.created_at >= since]
        author.events.append(event)
        author.events.sort(key=lambda e: e.created_at)
        del author.events[: -c.author_history]
        counted = [e for e in author.events if not e.flagged]
        complaints = [e for e in counted if e.complaint]
        churn = any(e.churn for e in counted)
        if len(complaints) >= c.complaints_to_churn or (churn and complaints):
            level = "churn_risk"
        elif len(complaints) >= c.complaints_to_escalate:
            level = "complaining"
        else:
            level = "none"
        previous, author.level = author.level, level
        if level == "none" or LEVELS.index(level) <= LEVELS.index(previous):
            return None
        return AuthorEscalation(
            brand=mention.brand,
            author_id=mention.author_id,
            level="churn_risk" if level == "churn_risk" else "complaining",
            previous_level=previous,
            complaints=len(complaints),
            posts=len(counted),
            mean_sentiment=round(sum(e.sentiment_value for e in counted) / max(1, len(counted)), 4),
            post_ids=[e.post_id for e in complaints],
            at=t,
        )

    def _add(
        self,
        state: BrandState,
        key: str,
        start: int,
        end: int,
        mention: BrandMention,
        reasons: list[str],
        terms: set[str],
        author: int,
    ) -> None:
        agg = state.windows.get(key)
        if agg is None:
            agg = state.windows[key] = WindowAgg(start, end)
        if reasons:
            agg.flagged += 1
            for reason in reasons:
                agg.flagged_reasons[reason] = agg.flagged_reasons.get(reason, 0) + 1
            return
        c = self.config
        agg.posts += 1
        agg.authors.add(author, mention.followers, c.window_authors, c.window_top_authors)
        agg.sentiments[mention.sentiment] = agg.sentiments.get(mention.sentiment, 0) + 1
        value = sentiment_value(mention.sentiment_scores)
        agg.sentiment_sum += value
        for label in mention.behaviours:
            agg.behaviours[label] = agg.behaviours.get(label, 0) + 1
        text = mention.text if len(mention.text) <= c.example_chars else mention.text[: c.example_chars - 1] + "…"
        example = Example(
            mention.post_id, mention.author_id, mention.followers, text, mention.sentiment, round(value, 4)
        )
        agg.top_followed = _top(agg.top_followed, example, c.examples, key=lambda e: (-e.followers, e.post_id))
        agg.most_negative = _top(agg.most_negative, example, c.examples, key=lambda e: (e.sentiment_value, e.post_id))
        _count_terms(agg.terms, terms, c.window_terms)

    # ------------------------------------------------------------------------------------ advance

    def advance(self, now_ms: int, brands: Iterable[str] | None = None) -> list[Output]:
        """Close the windows of `brands` (default: all) that the watermark `now_ms - lateness` has passed."""
        watermark = now_ms - self._lateness_ms
        outputs: list[Output] = []
        sweep: set[str] = set()
        for brand in list(self.brands) if brands is None else brands:
            state = self.brands.get(brand)
            if state is None:
                continue
            changed = self._close_tumbling(state, watermark, outputs)
            changed = self._close_hopping(state, watermark, outputs) or changed
            if watermark - state.authors_swept_at >= self.config.author_sweep_s * 1000:
                state.authors_swept_at = watermark
                sweep.add(brand)
                changed = True
            if changed:
                self.brands[brand] = state
        if sweep:
            self._forget_idle_authors(sweep, watermark - self.config.author_window_s * 1000)
        return outputs

    def _forget_idle_authors(self, brands: set[str], before_ms: int) -> None:
        """Drop the histories of `brands`' authors with no mention since `before_ms`: their escalation window has
        passed, and without this the author table grows with every author ever seen."""
        for key in list(self.authors):
            if key.partition(AUTHOR_KEY_SEPARATOR)[0] not in brands:
                continue
            author = self.authors.get(key)
            if author is not None and (not author.events or author.events[-1].created_at < before_ms):
                del self.authors[key]

    def next_close_ms(self, brand: str) -> int | None:
        """The `now_ms` at which `advance` would next close a window of `brand`."""
        state = self.brands.get(brand)
        if state is None:
            return None
        due = state.closed_until + self._window_ms
        if self._hop_size_ms:
            due = min(due, state.hop_closed_until + self._hop_step_ms)
        return due + self._lateness_ms

    def _close_tumbling(self, state: BrandState, watermark: int, outputs: list[Output]) -> bool:
        changed = False
        while state.closed_until + self._window_ms <= watermark:
            start = state.closed_until
            agg = state.windows.pop(f"t:{start}", None) or WindowAgg(start, start + self._window_ms)
            # The tracker closes the window first: a story born in it can be named by its alerts.
            updates = [] if self.stories is None else self.stories.closed(state.brand, agg.start, agg.end)
            expected, alerts = self._detect(state, agg)
            if agg.posts or agg.flagged:
                outputs.append(self._stats(state.brand, agg, "tumbling", expected))
            outputs.extend(updates)
            outputs.extend(alerts if self.stories is None else map(self.stories.explain, alerts))
            state.closed_until += self._window_ms
            changed = True
            if not any(key.startswith("t:") for key in state.windows) and state.incident is None:
                # A long silence: the empty windows only decay the baseline; skip ahead in one step.
                idle = (watermark - state.closed_until) // self._window_ms
                if idle > 0:
                    self._decay(state, int(idle))
                    state.closed_until += int(idle) * self._window_ms
        return changed

    def _close_hopping(self, state: BrandState, watermark: int, outputs: list[Output]) -> bool:
        if not self._hop_size_ms:
            return False
        changed = False
        while state.hop_closed_until + self._hop_step_ms <= watermark:
            end = state.hop_closed_until + self._hop_step_ms
            agg = state.windows.pop(f"h:{end - self._hop_size_ms}", None)
            if agg is not None:
                outputs.append(self._stats(state.brand, agg, "hopping"))
            state.hop_closed_until = end
            changed = True
            if not any(key.startswith("h:") for key in state.windows):
                state.hop_closed_until = max(end, watermark - watermark % self._hop_step_ms)
        return changed

    def _stats(self, brand: str, agg: WindowAgg, kind: str, expected: Expected | None = None) -> BrandStats:
        posts = agg.posts
        return BrandStats(
            brand=brand,
            window=Window("tumbling" if kind == "tumbling" else "hopping", agg.start, agg.end),
            posts=posts,
            unique_authors=agg.authors.unique(),
            reach=agg.authors.reach(),
            sentiment=dict(sorted(agg.sentiments.items())),
            sentiment_mix={k: round(v / posts, 4) for k, v in sorted(agg.sentiments.items())} if posts else {},
            mean_sentiment=round(agg.sentiment_sum / posts, 4) if posts else None,
            negativity=round(agg.sentiments.get("negative", 0) / posts, 4) if posts else None,
            behaviours=dict(sorted(agg.behaviours.items())),
            flagged=agg.flagged,
            flagged_reasons=dict(sorted(agg.flagged_reasons.items())),
            expected=expected,
        )

    # ----------------------------------------------------------------------------------- detection

    def _signals(self, state: BrandState, agg: WindowAgg) -> list[Signal]:
        c, baseline, volume = self.config, state.baseline, agg.posts
        signals: list[Signal] = []
        if baseline.volume.count >= c.warmup_windows:
            mean = baseline.volume.mean
            # Counts are at least Poisson-noisy: a quiet brand's near-zero variance must not make 3 posts a spike.
            std = max(math.sqrt(baseline.volume.var), math.sqrt(max(mean, 1.0)))
            signals.append(Signal("volume", volume, round(mean, 4), round(std, 4), round((volume - mean) / std, 3)))
        if baseline.negativity.count >= c.warmup_windows and volume >= c.min_volume:
            observed = agg.sentiments.get("negative", 0) / volume
            mean = baseline.negativity.mean
            # The baseline variance is sampling noise at the usual volume plus real variation between windows;
            # only the latter carries over, the sampling part is re-derived at this window's volume.
            binomial = max(mean * (1 - mean), 0.01)
            between = max(0.0, baseline.negativity.var - binomial / max(baseline.volume.mean, 1.0))
            std = max(math.sqrt(between + binomial / volume), c.negativity_std_floor)
            z = (observed - mean) / std
            if observed - mean < c.min_negativity_rise:
                z = min(z, c.z_threshold - 1e-3)
            signals.append(Signal("negativity", round(observed, 4), round(mean, 4), round(std, 4), round(z, 3)))
        return signals

    def _detect(self, state: BrandState, agg: WindowAgg) -> tuple[Expected, list[Alert]]:
        c = self.config
        signals = self._signals(state, agg)
        hot = [s for s in signals if s.z >= c.z_threshold and agg.posts >= c.min_volume]
        adapting = state.incident is not None and agg.start - state.incident.started >= c.adapt_after_windows * (
            self._window_ms
        )
        excluded: set[str] = set() if adapting else {s.metric for s in hot}
        self._update_baseline(state, agg, excluded)
        window = Window("tumbling", agg.start, agg.end)
        shift = self._shift.close_window(
            state.drift,
            state.brand,
            agg.start,
            agg.sentiments.get("negative", 0),
            agg.posts,
            excluded="negativity" in excluded,
        )
        alerts = self._detect_burst(state, agg, window, signals, hot)
        if shift.event is not None and shift.incident is not None:
            found = [shift.signal] if shift.signal is not None else []
            alerts.append(
                self._alert(state, shift.incident, shift.event, window, found, agg if shift.event == "firing" else None)
            )
        expected = Expected(
            volume=next((self._band(s, None) for s in signals if s.metric == "volume"), None),
            negativity=next((self._band(s, c.min_negativity_rise) for s in signals if s.metric == "negativity"), None),
            negativity_level=None if shift.level is None else round(shift.level, 4),
            negativity_usual=shift.band,
        )
        return expected, alerts

    def _band(self, signal: Signal, min_rise: float | None) -> Band:
        margin = self.config.z_threshold * signal.baseline_std
        high = signal.baseline_mean + (margin if min_rise is None else max(margin, min_rise))
        return Band(signal.baseline_mean, round(max(0.0, signal.baseline_mean - margin), 4), round(high, 4))

    def _detect_burst(
        self, state: BrandState, agg: WindowAgg, window: Window, signals: list[Signal], hot: list[Signal]
    ) -> list[Alert]:
        c = self.config
        state.streaks = {s.metric: state.streaks.get(s.metric, 0) + 1 for s in hot}
        incident = state.incident
        if incident is None:
            firing = [s for s in hot if s.z >= c.z_immediate or state.streaks[s.metric] >= c.confirm_windows]
            if not firing or agg.start < state.cooldown_until:
                return []
            # Once one metric fires, the other needs only to be anomalous to make the incident a crisis.
            kind = _kind(hot)
            state.incident = Incident(f"{state.brand}:{kind}:{agg.start}", kind, agg.start)
            return [self._alert(state, state.incident, "firing", window, hot, agg)]
        strong = [s for s in signals if s.z >= c.resolve_z]
        if hot and _kind(hot) == "crisis" and incident.kind != "crisis":
            escalated_from = _KINDS[incident.kind]
            incident.kind, incident.quiet_windows = "crisis", 0
            return [self._alert(state, incident, "escalated", window, hot, agg, escalated_from)]
        incident.quiet_windows = 0 if strong else incident.quiet_windows + 1
        if incident.quiet_windows < c.resolve_windows:
            return []
        state.incident = None
        state.cooldown_until = agg.end + c.cooldown_windows * self._window_ms
        return [self._alert(state, incident, "resolved", window, signals, None)]

    def _alert(
        self,
        state: BrandState,
        incident: Incident,
        status: Literal["firing", "escalated", "resolved"],
        window: Window,
        signals: list[Signal],
        agg: WindowAgg | None,
        escalated_from: AlertKind | None = None,
    ) -> Alert:
        kind = _KINDS[incident.kind]
        primary = max(signals, key=lambda s: s.z) if signals else Signal("volume", 0.0, 0.0, 0.0, 0.0)
        examples: list[Example] = []
        if agg is not None:
            for example in [*agg.most_negative, *agg.top_followed]:
                if all(e.post_id != example.post_id for e in examples):
                    examples.append(example)
        return Alert(
            alert_id=incident.id,
            status=status,
            brand=state.brand,
            kind=kind,
            severity=severity_of(kind),
            window=window,
            metric=primary.metric,
            observed=primary.observed,
            baseline_mean=primary.baseline_mean,
            baseline_std=primary.baseline_std,
            z=primary.z,
            signals=signals,
            started_at=incident.started,
            examples=examples,
            top_terms=self._top_terms(state, agg) if agg is not None else [],
            escalated_from=escalated_from,
        )

    def _top_terms(self, state: BrandState, agg: WindowAgg) -> list[TermLift]:
        if not agg.posts:
            return []
        baseline = state.baseline.terms
        # Smoothing: a term never seen in the baseline counts as if one post in a typical window had it.
        floor = 1.0 / max(1.0, state.baseline.volume.mean + 1.0)
        lifts = []
        for term, count in agg.terms.items():
            if count < 2:
                continue
            share = count / agg.posts
            base = baseline.get(term, 0.0)
            lift = share / max(base, floor)
            if lift > 1.0:
                lifts.append(TermLift(term, count, round(share, 4), round(base, 4), round(lift, 3)))
        lifts.sort(key=lambda t: (-t.posts * math.log(t.lift), t.term))
        return lifts[: self.config.top_terms]

    def _update_baseline(self, state: BrandState, agg: WindowAgg, hot: set[str]) -> None:
        c, baseline, alpha = self.config, state.baseline, self.config.ewma_alpha
        # Anomalous windows are kept out, so an incident is measured against the time before it.
        if "volume" not in hot:
            baseline.volume.update(agg.posts, alpha)
        if agg.posts >= c.min_volume and "negativity" not in hot:
            baseline.negativity.update(agg.sentiments.get("negative", 0) / agg.posts, alpha)
        if hot:
            return
        terms = baseline.terms
        for term in terms:
            terms[term] *= 1 - alpha
        if agg.posts:
            for term, count in agg.terms.items():
                terms[term] = terms.get(term, 0.0) + alpha * count / agg.posts
        if len(terms) > c.baseline_terms:
            kept = sorted(terms.items(), key=lambda item: -item[1])[: c.baseline_terms]
            baseline.terms = dict(kept)

    def _decay(self, state: BrandState, windows: int) -> None:
        """The baseline after `windows` empty windows in a row (no posts, so no anomaly)."""
        alpha = self.config.ewma_alpha
        for _ in range(min(windows, 10 * math.ceil(1 / alpha))):
            state.baseline.volume.update(0.0, alpha)
        keep = (1 - alpha) ** windows
        state.streaks = {}
        # Silence leaves the shift detector's levels as they were (no posts, no evidence), but ends a streak.
        state.drift.streak = 0
        state.baseline.terms = {t: v * keep for t, v in state.baseline.terms.items() if v * keep >= 1e-4}


_KINDS: dict[str, AlertKind] = {k: k for k in ("crisis", "volume_spike", "negativity_spike", "negativity_shift")}  # type: ignore[misc]


def _kind(signals: list[Signal]) -> AlertKind:
    metrics = {s.metric for s in signals}
    if metrics == {"volume", "negativity"}:
        return "crisis"
    return "volume_spike" if "volume" in metrics else "negativity_spike"


def _top(items: list[Example], item: Example, n: int, key: Callable[[Example], tuple[float, str]]) -> list[Example]:
    return sorted([*items, item], key=key)[:n]


def _count_terms(counts: dict[str, int], terms: set[str], capacity: int) -> None:
    """Misra-Gries: exact for frequent terms, bounded memory whatever the vocabulary."""
    for term in sorted(terms):
        if term in counts:
            counts[term] += 1
        elif len(counts) < capacity:
            counts[term] = 1
        else:
            for other in list(counts):
                counts[other] -= 1
                if counts[other] == 0:
                    del counts[other]
