"""Brand monitoring records: the state kept per brand and per author, and the events it emits.

State structs are plain msgspec structs so they round-trip through JSON unchanged: the worker keeps them
in Faust tables (changelogged, restored on restart), the backtest in dicts. Output structs are the wire
format of `social.brand_stats` and `social.alerts` (documented in docs/BRANDS.md); each is tagged
with a `type` field, so a consumer can decode the union `Output`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# ----------------------------------------------------------------------------------------------- state


class Example(msgspec.Struct):
    post_id: str
    author_id: str
    followers: int
    text: str
    sentiment: str
    # positive - negative score, in -1..1
    sentiment_value: float


class WindowAgg(msgspec.Struct):
    """One open window of one brand. Flagged posts only count in `flagged*`."""

    start: int
    end: int
    posts: int = 0
    # author -> followers (the largest seen): unique authors and reach without double counting.
    authors: dict[str, int] = msgspec.field(default_factory=dict)
    sentiments: dict[str, int] = msgspec.field(default_factory=dict)
    sentiment_sum: float = 0.0
    behaviours: dict[str, int] = msgspec.field(default_factory=dict)
    flagged: int = 0
    flagged_reasons: dict[str, int] = msgspec.field(default_factory=dict)
    top_followed: list[Example] = msgspec.field(default_factory=list)
    most_negative: list[Example] = msgspec.field(default_factory=list)
    # Posts containing each term (bounded by Misra-Gries: frequent terms are kept, rare ones dropped).
    terms: dict[str, int] = msgspec.field(default_factory=dict)


class Ewma(msgspec.Struct):
    count: int = 0
    mean: float = 0.0
    var: float = 0.0

    def update(self, value: float, alpha: float) -> None:
        if self.count == 0:
            self.mean, self.var = value, 0.0
        else:
            # West's incremental EWMA variance.
            diff = value - self.mean
            step = alpha * diff
            self.mean += step
            self.var = (1 - alpha) * (self.var + diff * step)
        self.count += 1


class Baseline(msgspec.Struct):
    volume: Ewma = msgspec.field(default_factory=Ewma)
    negativity: Ewma = msgspec.field(default_factory=Ewma)
    # term -> EWMA share of posts containing it.
    terms: dict[str, float] = msgspec.field(default_factory=dict)


class Incident(msgspec.Struct):
    id: str
    kind: str
    started: int  # start of the first anomalous window
    quiet_windows: int = 0


class NearSignature(msgspec.Struct, array_like=True):
    created_at: int
    signature: bytes


class BrandState(msgspec.Struct):
    brand: str
    max_event_ms: int = 0
    # Tumbling windows ending at or before this are closed (and posts older than it are late).
    closed_until: int = 0
    # Hopping windows ending at or before this are closed.
    hop_closed_until: int = 0
    # "t:<start>" tumbling, "h:<start>" hopping.
    windows: dict[str, WindowAgg] = msgspec.field(default_factory=dict)
    baseline: Baseline = msgspec.field(default_factory=Baseline)
    incident: Incident | None = None
    # metric -> consecutive anomalous windows up to the last closed one.
    streaks: dict[str, int] = msgspec.field(default_factory=dict)
    # No new incident opens for a window starting before this.
    cooldown_until: int = 0
    # post id -> created_at, for posts in still-open windows: a redelivered post is not counted twice.
    seen: dict[str, int] = msgspec.field(default_factory=dict)
    # normalised-text hash -> last seen (event time), oldest first.
    recent_hashes: dict[str, int] = msgspec.field(default_factory=dict)
    recent_signatures: list[NearSignature] = msgspec.field(default_factory=list)
    late: int = 0
    # Event time of the last sweep of this brand's idle authors.
    authors_swept_at: int = 0


class AuthorEvent(msgspec.Struct, array_like=True):
    created_at: int
    post_id: str
    sentiment_value: float
    complaint: bool
    churn: bool
    flagged: bool


class AuthorState(msgspec.Struct):
    events: list[AuthorEvent] = msgspec.field(default_factory=list)
    level: str = "none"


# --------------------------------------------------------------------------------------------- outputs


class Window(msgspec.Struct, frozen=True):
    kind: Literal["tumbling", "hopping"]
    start: int  # epoch ms, inclusive
    end: int  # epoch ms, exclusive


class BrandStats(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="brand_stats"):
    brand: str
    window: Window
    posts: int
    unique_authors: int
    reach: int
    sentiment: dict[str, int]
    sentiment_mix: dict[str, float]
    mean_sentiment: float | None
    negativity: float | None
    behaviours: dict[str, int]
    flagged: int
    flagged_reasons: dict[str, int]


class Signal(msgspec.Struct, frozen=True):
    metric: Literal["volume", "negativity"]
    observed: float
    baseline_mean: float
    baseline_std: float
    z: float


class TermLift(msgspec.Struct, frozen=True):
    term: str
    posts: int
    window_share: float
    baseline_share: float
    lift: float


AlertKind = Literal["volume_spike", "negativity_spike", "crisis"]
Severity = Literal["warning", "critical"]


def severity_of(kind: AlertKind) -> Severity:
    return "critical" if kind == "crisis" else "warning"


class Alert(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="alert"):
    alert_id: str
    status: Literal["firing", "escalated", "resolved"]
    brand: str
    kind: AlertKind
    severity: Severity
    window: Window
    # The strongest signal, repeated at the top level; every signal is in `signals`.
    metric: str
    observed: float
    baseline_mean: float
    baseline_std: float
    z: float
    signals: list[Signal]
    started_at: int
    examples: list[Example] = msgspec.field(default_factory=list)
    top_terms: list[TermLift] = msgspec.field(default_factory=list)
    # On `escalated`: the kind the incident had until this window.
    escalated_from: AlertKind | None = None


class AuthorEscalation(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="author_escalation"):
    brand: str
    author_id: str
    level: Literal["complaining", "churn_risk"]
    previous_level: str
    complaints: int
    posts: int
    mean_sentiment: float
    post_ids: list[str]
    at: int  # event time of the post that escalated


class FlaggedMention(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="flagged_mention"):
    brand: str
    post_id: str
    author_id: str
    created_at: int
    reasons: list[str]


Output = BrandStats | Alert | AuthorEscalation | FlaggedMention
