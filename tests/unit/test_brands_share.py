"""Share of voice: competitor sets in the brands file, and the per-set aggregation of the members' closed windows
(shares, members that lag or never report, replays, bounded state), alone and behind the brand monitor."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from stream.brands.model import MemberWindow, ShareContribution, ShareOfVoice, ShareState
from stream.brands.monitor import BrandMonitor
from stream.brands.query import QuerySyntaxError
from stream.brands.share import CompetitorSets, ShareAggregator, contributions
from tests.unit.test_brands_monitor import MINUTE, T0, config, mention, stats

REPO = Path(__file__).resolve().parents[2]
BRANDS = "brands:\n  Acme: acme\n  Globex: globex\n  Initech: initech\n"
SETS = CompetitorSets({"rivals": ["Acme", "Globex", "Initech"]})


def aggregator(
    sets: CompetitorSets = SETS, wait: int = 5, max_pending: int = 60, states: dict[str, ShareState] | None = None
) -> ShareAggregator:
    return ShareAggregator(sets, 60, wait, max_pending, states)


def part(brand: str, closed_until: int, *windows: tuple[int, int, int, int]) -> ShareContribution:
    """A contribution of `brand` to "rivals"; windows as (minute, posts, negative, reach)."""
    return ShareContribution(
        competitor_set="rivals",
        brand=brand,
        closed_until=closed_until,
        windows=[MemberWindow(T0 + m * MINUTE, posts, neg, reach) for m, posts, neg, reach in windows],
    )


def shares(record: ShareOfVoice, measure: str) -> dict[str, float | None]:
    return {b.brand: getattr(b, f"{measure}_share") for b in record.brands}


# --------------------------------------------------------------------------------------------- the file


def test_sets_are_read_from_the_brands_file_and_old_files_have_none() -> None:
    text = BRANDS + "competitor_sets:\n  rivals: [Acme, Globex]\n  all:\n    - Initech\n    - Acme\n"
    sets = CompetitorSets.from_yaml_text(text)
    assert sets.sets == {"rivals": ("Acme", "Globex"), "all": ("Initech", "Acme")}
    assert sets.of("Acme") == ["rivals", "all"] and sets.of("Umbrella") == []
    assert not CompetitorSets.from_yaml_text(BRANDS)


def test_the_demo_file_groups_its_brands() -> None:
    sets = CompetitorSets.from_yaml(REPO / "deploy/brands/demo.yaml")
    assert sets.sets["demo"] == ("Acme", "Globex", "Initech", "Umbrella")
    assert set(sets.sets["platforms"]) == {"Twitter", "Google", "Apple", "Facebook"}


@pytest.mark.parametrize(
    ("sets", "line", "column", "message"),
    [
        ("  rivals: [Acme, Globx]\n", 6, 18, "'Globx' is not a brand under `brands:`"),
        ("  rivals: [Acme]\n", 6, 11, "'rivals' must list at least two brands"),
        ("  rivals: Acme\n", 6, 11, "must list at least two brands"),
        ("  rivals: [Acme, Globex, Acme]\n", 6, 26, "lists 'Acme' twice"),
        ("  rivals: [Acme, Globex]\n  rivals: [Acme, Initech]\n", 7, 3, "'rivals' is defined twice"),
        ("  - Acme\n", 6, 3, "must map set names to lists of brands"),
    ],
)
def test_a_bad_set_is_refused_with_its_place_in_the_file(sets: str, line: int, column: int, message: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        CompetitorSets.from_yaml_text(BRANDS + "competitor_sets:\n" + sets, "brands.yaml")
    assert (caught.value.line, caught.value.column) == (line, column), str(caught.value)
    assert message in caught.value.message
    assert str(caught.value).startswith(f"brands.yaml:{line}:{column}: ")


def test_the_worker_refuses_a_bad_set_at_start(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stream.cli import app

    brands = tmp_path / "brands.yaml"
    brands.write_text(BRANDS + "competitor_sets:\n  rivals: [Acme, Umbrella]\n", encoding="utf-8")
    env = {"SOCIALPULSE_BRANDS_FILE": str(brands), "SOCIALPULSE_DATA_DIR": str(tmp_path / "faust")}
    for role in ("all", "brands"):
        result = CliRunner().invoke(app, ["run", "--role", role], env=env)
        assert result.exit_code == 2, result.output
        assert f"{brands}:6:18: competitor set 'rivals': 'Umbrella' is not a brand under `brands:`" in result.output


# ------------------------------------------------------------------------------------------ aggregation


def test_a_window_is_published_once_every_member_closed_it_and_its_shares_sum_to_one() -> None:
    agg = aggregator()
    assert agg.add(part("Acme", T0 + MINUTE, (0, 6, 3, 600))) == []
    assert agg.add(part("Globex", T0 + MINUTE, (0, 3, 1, 300))) == []
    # Initech had no mention in the window: once it has closed it, it counts 0.
    (record,) = agg.add(part("Initech", T0 + 2 * MINUTE))
    assert (record.competitor_set, record.window.start, record.window.end) == ("rivals", T0, T0 + MINUTE)
    assert (record.mentions, record.negative, record.reach, record.missing, record.empty) == (9, 4, 900, [], [])
    assert shares(record, "mention") == {"Acme": 6 / 9, "Globex": 3 / 9, "Initech": 0.0}
    assert shares(record, "negative") == {"Acme": 0.75, "Globex": 0.25, "Initech": 0.0}
    assert shares(record, "reach") == {"Acme": 600 / 900, "Globex": 300 / 900, "Initech": 0.0}
    for measure in ("mention", "negative", "reach"):
        assert sum(v or 0.0 for v in shares(record, measure).values()) == pytest.approx(1.0)
    assert [b.brand for b in record.brands] == ["Acme", "Globex", "Initech"]


def test_a_measure_with_a_zero_total_says_so_instead_of_dividing() -> None:
    agg = aggregator()
    agg.add(part("Acme", T0 + MINUTE, (0, 2, 0, 0)))
    agg.add(part("Globex", T0 + MINUTE, (0, 0, 0, 0)))  # only flagged posts
    (record,) = agg.add(part("Initech", T0 + MINUTE))
    assert record.empty == ["negative", "reach"]
    assert shares(record, "negative") == {"Acme": None, "Globex": None, "Initech": None}
    assert shares(record, "mention") == {"Acme": 1.0, "Globex": 0.0, "Initech": 0.0}


def test_a_member_that_never_reports_is_waited_for_then_listed_missing() -> None:
    agg = aggregator(wait=3)
    agg.add(part("Globex", T0 + MINUTE, (0, 1, 0, 10)))
    assert agg.add(part("Acme", T0 + 3 * MINUTE, (0, 3, 1, 30), (2, 1, 1, 10))) == []
    # Window 0 ends at minute 1: the others' event time must pass minute 1 + 3 windows.
    assert agg.add(part("Globex", T0 + 3 * MINUTE, (2, 1, 0, 10))) == []
    (first,) = agg.add(part("Acme", T0 + 5 * MINUTE))
    (second,) = agg.add(part("Globex", T0 + 6 * MINUTE))
    assert [first.window.start, second.window.start] == [T0, T0 + 2 * MINUTE]
    assert first.missing == ["Initech"] and shares(first, "mention") == {"Acme": 0.75, "Globex": 0.25, "Initech": 0.0}
    assert second.missing == ["Initech"]
    # Its later report of a published window does not change it or publish it again.
    assert agg.add(part("Initech", T0 + 6 * MINUTE, (0, 5, 5, 50))) == []
    assert agg.states["rivals"].pending == {}


def test_a_member_that_reported_before_is_waited_for_up_to_the_bound() -> None:
    agg = aggregator(wait=1, max_pending=3)
    agg.add(part("Initech", T0))  # heard from, then lags behind
    agg.add(part("Globex", T0 + 10 * MINUTE))
    published = []
    for minute in range(6):
        published += agg.add(part("Acme", T0 + (minute + 1) * MINUTE, (minute, 1, 0, 1)))
    # Held while the set has at most 3 windows waiting; then the oldest go out with the laggard named.
    assert [(r.window.start - T0) // MINUTE for r in published] == [0, 1, 2]
    assert all(r.missing == ["Initech"] for r in published)
    assert len(agg.states["rivals"].pending) == 3
    (record,) = agg.add(part("Initech", T0 + 4 * MINUTE, (3, 1, 1, 1)))
    assert record.window.start == T0 + 3 * MINUTE and record.missing == []
    assert shares(record, "mention") == {"Acme": 0.5, "Globex": 0.0, "Initech": 0.5}


def test_contributions_of_brands_outside_the_set_or_of_a_removed_set_are_ignored() -> None:
    agg = aggregator()
    assert agg.add(part("Umbrella", T0 + MINUTE, (0, 1, 1, 1))) == []
    removed = ShareContribution(competitor_set="gone", brand="Acme", closed_until=T0 + MINUTE, windows=[])
    assert agg.add(removed) == []
    assert "gone" not in agg.states and "Umbrella" not in agg.states.get("rivals", ShareState()).progress


def random_contributions(seed: int) -> list[ShareContribution]:
    """Each member closing 20 windows in steps of 1-3 windows, some windows empty, interleaved at random."""
    rng = random.Random(seed)
    queues: dict[str, list[ShareContribution]] = {}
    for brand in SETS.sets["rivals"]:
        minute, parts = 0, []
        while minute < 20:
            step = rng.randint(1, 3)
            windows = [
                (m, rng.randint(0, 9), rng.randint(0, 3), rng.randint(0, 500)) for m in range(minute, minute + step)
            ]
            parts.append(
                part(brand, T0 + (minute + step) * MINUTE, *[w for w in windows if w[1] or rng.random() < 0.3])
            )
            minute += step
        queues[brand] = parts
    merged = []
    while any(queues.values()):
        brand = rng.choice([b for b, q in queues.items() if q])
        merged.append(queues[brand].pop(0))
    return merged


@pytest.mark.parametrize("seed", range(5))
def test_replays_after_a_restart_and_repeated_sends_count_once(seed: int) -> None:
    stream = random_contributions(seed)
    reference: list[ShareOfVoice] = []
    whole = aggregator(wait=100)
    for c in stream:
        reference += whole.add(c)
    assert len(reference) == len({r.window.start for r in reference}) >= 10

    # The share agent's state flushed at `cut`, the worker killed later and its records replayed from an
    # earlier committed offset; the monitor sends some contributions twice as well.
    rng = random.Random(seed)
    cut, committed = sorted(rng.sample(range(len(stream)), 2))[::-1]
    first = aggregator(wait=100)
    published: list[ShareOfVoice] = []
    for c in stream[:cut]:
        published += first.add(c)
    flushed = msgspec.json.encode(first.states["rivals"])
    restored = aggregator(wait=100, states={"rivals": msgspec.json.decode(flushed, type=ShareState)})
    for c in stream[committed:]:
        published += restored.add(c)
        if rng.random() < 0.2:
            published += restored.add(c)
    by_window = {r.window.start: r for r in published}
    assert len(published) == len(by_window), "a window was published twice"
    assert list(by_window.values()) == reference


def test_behind_the_monitor_each_window_gets_the_members_counts() -> None:
    """The monitor closing windows of three brands (one silent for a while), the agent's contributions from
    each close, and the published shares against the monitor's own stats of each window."""
    monitor = BrandMonitor(config(allowed_lateness_s=0))
    agg = aggregator()
    rng = random.Random(4)
    published: list[ShareOfVoice] = []
    brand_stats = []
    for n in range(600):
        at = T0 + n * 1_000
        brand = rng.choice(["Acme", "Acme", "Globex", "Umbrella"] + (["Initech"] if n > 300 else []))
        members = [b for b in monitor.brands if SETS.of(b)]
        before = {b: monitor.brands[b].closed_until for b in members}
        closed = monitor.advance(at)
        after = {b: monitor.brands[b].closed_until for b in members}
        brand_stats += stats(closed)
        for c in contributions(SETS, before, after, closed):
            published += agg.add(c)
        sentiment = rng.choice(["negative", "neutral", "positive"])
        monitor.observe(mention(n, at, brand=brand, author=f"a{n % 40}", followers=n, sentiment=sentiment))
    assert len(published) >= 8
    counted = {(s.brand, s.window.start): s for s in brand_stats}
    for record in published:
        for share in record.brands:
            s = counted.get((share.brand, record.window.start))
            expected = (s.posts, s.sentiment.get("negative", 0), s.reach) if s else (0, 0, 0)
            assert (share.mentions, share.negative, share.reach) == expected, (record.window, share)
        assert record.mentions == sum(b.mentions for b in record.brands) > 0
        assert sum(b.mention_share or 0.0 for b in record.brands) == pytest.approx(1.0)
        # Initech is first mentioned at minute 5: a window published before it first reported lists it missing;
        # once it has reported, the windows before its first mention are closed for it, and count 0.
        assert record.missing == [] or (record.missing == ["Initech"] and record.window.end <= T0 + 5 * MINUTE)
    assert any(r.missing for r in published)
    assert any(not r.missing and r.window.end <= T0 + 5 * MINUTE for r in published)
