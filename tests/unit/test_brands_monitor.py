"""BrandMonitor: window aggregates, watermark, noise flags, author escalation, restart from serialised state."""

from __future__ import annotations

import msgspec

from stream.brands.model import AuthorEscalation, AuthorState, BrandState, BrandStats, FlaggedMention, Output
from stream.brands.monitor import BrandMonitor, MonitorConfig
from stream.schema import BrandMention

T0 = 1_767_225_600_000  # a window boundary
MINUTE = 60_000
SCORES = {
    "negative": {"negative": 0.8, "neutral": 0.15, "positive": 0.05},
    "neutral": {"negative": 0.1, "neutral": 0.8, "positive": 0.1},
    "positive": {"negative": 0.05, "neutral": 0.15, "positive": 0.8},
}


def mention(
    n: int,
    at: int,
    *,
    brand: str = "Acme",
    author: str | None = None,
    followers: int = 100,
    text: str | None = None,
    sentiment: str = "neutral",
    behaviours: tuple[str, ...] = (),
) -> BrandMention:
    return BrandMention(
        post_id=f"p{n}",
        brand=brand,
        text=text or f"post number {n} about acme and topic{n}",
        created_at=at,
        author_id=author or f"a{n}",
        followers=followers,
        platform="x",
        language="en",
        sentiment=sentiment,
        sentiment_scores=SCORES[sentiment],
        behaviours=list(behaviours),
        behaviour_scores={},
    )


def config(**changes: int | float) -> MonitorConfig:
    return MonitorConfig(hop_size_s=0, **changes)  # type: ignore[arg-type]


def stats(outputs: list[Output], kind: str = "tumbling") -> list[BrandStats]:
    return [o for o in outputs if isinstance(o, BrandStats) and o.window.kind == kind]


def test_tumbling_window_aggregates_close_at_end_plus_lateness() -> None:
    monitor = BrandMonitor(config(allowed_lateness_s=10))
    monitor.observe(mention(1, T0 + 1_000, author="x", followers=10, sentiment="negative", behaviours=("complaint",)))
    monitor.observe(mention(2, T0 + 2_000, author="x", followers=12, sentiment="positive"))
    monitor.observe(mention(3, T0 + 3_000, author="y", followers=5, sentiment="positive", behaviours=("praise",)))
    assert monitor.advance(T0 + MINUTE + 9_999) == []
    (closed,) = stats(monitor.advance(T0 + MINUTE + 10_000))
    assert (closed.window.start, closed.window.end) == (T0, T0 + MINUTE)
    assert closed.posts == 3
    assert closed.unique_authors == 2
    assert closed.reach == 12 + 5  # per author, the largest follower count seen
    assert closed.sentiment == {"negative": 1, "positive": 2}
    assert closed.sentiment_mix == {"negative": 0.3333, "positive": 0.6667}
    assert closed.negativity == 0.3333
    assert closed.mean_sentiment == round((-0.75 + 0.75 + 0.75) / 3, 4)
    assert closed.behaviours == {"complaint": 1, "praise": 1}


def test_hopping_windows_overlap() -> None:
    monitor = BrandMonitor(MonitorConfig(hop_size_s=120, hop_step_s=60, allowed_lateness_s=0))
    monitor.observe(mention(1, T0 + 30_000))
    monitor.observe(mention(2, T0 + 90_000))
    outputs = monitor.advance(T0 + 4 * MINUTE)
    hopping = {(s.window.start - T0) // MINUTE: s.posts for s in stats(outputs, "hopping")}
    assert hopping == {-1: 1, 0: 2, 1: 1}
    assert [s.posts for s in stats(outputs)] == [1, 1]


def test_late_and_redelivered_mentions_are_not_counted() -> None:
    monitor = BrandMonitor(config(allowed_lateness_s=0))
    monitor.observe(mention(1, T0 + 1_000))
    assert monitor.observe(mention(1, T0 + 1_000)) == []  # redelivery after a crash
    monitor.observe(mention(2, T0 + MINUTE + 1_000))
    (first,) = stats(monitor.advance(T0 + MINUTE + 1_000))
    assert first.posts == 1
    monitor.observe(mention(3, T0 + 5_000))  # its window has closed
    assert monitor.brands["Acme"].late == 1
    (second,) = stats(monitor.advance(T0 + 2 * MINUTE))
    assert second.posts == 1


def test_noise_flags_are_emitted_and_excluded_from_counts() -> None:
    monitor = BrandMonitor(config(max_author_posts=3))
    text = "Acme support never answers my emails, three weeks now and no refund for the broken order"
    outputs: list[Output] = []
    outputs += monitor.observe(mention(1, T0 + 1_000, text=text))
    outputs += monitor.observe(mention(2, T0 + 2_000, text="RT @someone: " + text.upper() + " https://t.co/x"))
    outputs += monitor.observe(mention(3, T0 + 3_000, text=text + " seriously"))
    outputs += monitor.observe(mention(4, T0 + 4_000, text="#acme https://spam.example/deal @acme"))
    outputs += monitor.observe(mention(5, T0 + 5_000, followers=0, text="great acme deal here https://x.example/a"))
    outputs += monitor.observe(mention(6, T0 + 6_000, text="acme is selling cheap", behaviours=("spam",)))
    for n in range(7, 12):
        outputs += monitor.observe(mention(n, T0 + 7_000 + n, author="fan", text=f"acme message {n} for everyone"))
    flags = {o.post_id: o.reasons for o in outputs if isinstance(o, FlaggedMention)}
    assert flags == {
        "p2": ["duplicate"],
        "p3": ["near_duplicate"],
        "p4": ["link_only"],
        "p5": ["low_followers_link"],
        "p6": ["model_spam"],
        "p10": ["high_rate"],
        "p11": ["high_rate"],
    }
    (closed,) = stats(monitor.advance(T0 + 2 * MINUTE))
    assert closed.posts == 11 - 7
    assert closed.flagged == 7
    assert closed.flagged_reasons["high_rate"] == 2


def test_duplicates_expire_after_the_dedupe_window() -> None:
    monitor = BrandMonitor(config(dedupe_window_s=600))
    text = "the acme app logged me out again and lost my settings"
    assert monitor.observe(mention(1, T0, text=text)) == []
    assert monitor.observe(mention(2, T0 + 700_000, text=text)) == []


def test_author_escalation_fires_once_per_level() -> None:
    monitor = BrandMonitor(config())
    complaint = {"sentiment": "negative", "behaviours": ("complaint",), "author": "angry"}
    outputs: list[Output] = []
    for n, text in enumerate(["my acme order is late", "acme still has not shipped", "acme support ignores me"]):
        outputs += monitor.observe(mention(n, T0 + n * MINUTE, text=text, **complaint))  # type: ignore[arg-type]
    outputs += monitor.observe(mention(9, T0 + 4 * MINUTE, text="acme again nothing", **complaint))  # type: ignore[arg-type]
    escalations = [o for o in outputs if isinstance(o, AuthorEscalation)]
    assert [(e.level, e.previous_level, e.complaints) for e in escalations] == [
        ("complaining", "none", 2),
        ("churn_risk", "complaining", 3),
    ]
    assert escalations[-1].post_ids == ["p0", "p1", "p2"]
    assert escalations[-1].mean_sentiment == -0.75


def test_churn_label_after_a_complaint_escalates_straight_to_churn_risk() -> None:
    monitor = BrandMonitor(config())
    monitor.observe(mention(1, T0, author="z", sentiment="negative", behaviours=("complaint",)))
    (escalation,) = monitor.observe(
        mention(2, T0 + MINUTE, author="z", text="cancelling acme today", behaviours=("churn_risk",))
    )
    assert isinstance(escalation, AuthorEscalation)
    assert escalation.level == "churn_risk"


def test_authors_idle_for_the_author_window_are_forgotten_per_brand() -> None:
    monitor = BrandMonitor(config(author_window_s=3600, author_sweep_s=600))
    monitor.observe(mention(1, T0, author="old", sentiment="negative", behaviours=("complaint",)))
    monitor.observe(mention(2, T0, brand="Globex", author="old"))
    monitor.observe(mention(3, T0 + 50 * MINUTE, author="recent"))
    monitor.advance(T0 + 55 * MINUTE)
    assert set(monitor.authors) == {"Acme\x1fold", "Globex\x1fold", "Acme\x1frecent"}, "nothing idle an hour yet"
    monitor.observe(mention(4, T0 + 70 * MINUTE, author="recent"))
    monitor.advance(T0 + 71 * MINUTE, ["Acme"])
    assert set(monitor.authors) == {"Globex\x1fold", "Acme\x1frecent"}, "only the advanced brand is swept"
    # A returning author starts a fresh history: the old complaint no longer counts towards escalation.
    outputs = monitor.observe(
        mention(5, T0 + 72 * MINUTE, author="old", sentiment="negative", behaviours=("complaint",))
    )
    assert not [o for o in outputs if isinstance(o, AuthorEscalation)]
    assert [e.post_id for e in monitor.authors["Acme\x1fold"].events] == ["p5"]


def test_a_monitor_restored_from_serialised_state_continues_identically() -> None:
    """What the Faust tables give the worker: state written as JSON mid-window, read by a new process."""
    cfg = MonitorConfig(hop_size_s=180, hop_step_s=60, warmup_windows=3, min_volume=3)
    mentions = [
        mention(n, T0 + n * 7_000, author=f"a{n % 5}", sentiment=("negative", "neutral", "positive")[n % 3])
        for n in range(120)
    ]
    whole = BrandMonitor(cfg)
    expected: list[Output] = []
    for m in mentions:
        expected += whole.advance(m.created_at) + whole.observe(m)
    expected += whole.advance(T0 + 60 * MINUTE)

    first = BrandMonitor(cfg)
    outputs: list[Output] = []
    for m in mentions[:61]:  # stops mid-window
        outputs += first.advance(m.created_at) + first.observe(m)
    brands = {k: msgspec.json.encode(v) for k, v in first.brands.items()}
    authors = {k: msgspec.json.encode(v) for k, v in first.authors.items()}
    second = BrandMonitor(
        cfg,
        {k: msgspec.json.decode(v, type=BrandState) for k, v in brands.items()},
        {k: msgspec.json.decode(v, type=AuthorState) for k, v in authors.items()},
    )
    for m in mentions[55:]:  # the last few again, as after an uncommitted offset
        outputs += second.advance(m.created_at) + second.observe(m)
    outputs += second.advance(T0 + 60 * MINUTE)
    assert outputs == expected
    assert len(stats(expected)) == 14
