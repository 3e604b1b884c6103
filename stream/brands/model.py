"""Brand monitoring records: the state kept per brand and per author, and the events it emits.

State structs are plain msgspec structs so they round-trip through JSON unchanged: the worker keeps them
in Faust tables (changelogged, restored on restart), the backtest in dicts. Output structs are the wire
format of `social.brand_stats`, `social.alerts` and `social.stories` (documented in docs/BRANDS.md); each is tagged
with a `type` field, so a consumer can decode the union `Output`. ShareContribution is the internal share
topic's.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

HASH_SPACE = 1 << 64

# ----------------------------------------------------------------------------------------------- state


class Example(msgspec.Struct):
    post_id: str
    author_id: str
    followers: int
    text: str
    sentiment: str
    # positive - negative score, in -1..1
    sentiment_value: float


class AuthorSample(msgspec.Struct):
    """A window's authors for unique authors and reach, bounded: a KMV (k minimum values) sketch.

    Up to `capacity` authors it holds every one (exact counts). Beyond, it keeps the `capacity` authors whose
    id hashes are smallest, a uniform sample, and estimates the number of authors as (k - 1) / (k-th smallest
    hash, as a fraction of 2^64) (Bar-Yossef et al., 2002; relative standard error about 1 / sqrt(k - 2)).
    Follower counts are heavy-tailed, so a sample's mean misses or overweights the few large accounts that
    carry most of the reach: the `heavy` most-followed authors are summed exactly, and the sample estimates
    only the rest. Keyed by hash, so an author counts once however often they post.
    """

    # id hash -> followers (the largest seen), for the authors with the smallest hashes.
    followers: dict[int, int] = msgspec.field(default_factory=dict)
    # Some author was left out or dropped: the counts are estimates.
    saturated: bool = False
    # The largest hash held, once the sample is full.
    ceiling: int = 0
    # id hash -> followers of the most-followed authors.
    top: dict[int, int] = msgspec.field(default_factory=dict)
    # The fewest followers in `top`, once it is full.
    top_floor: int = 0

    def add(self, digest: int, followers: int, capacity: int, heavy: int) -> None:
        self._add_top(digest, followers, heavy)
        known = self.followers.get(digest)
        if known is not None:
            self.followers[digest] = max(known, followers)
        elif len(self.followers) < capacity:
            self.followers[digest] = followers
            if len(self.followers) == capacity:
                self.ceiling = max(self.followers)
        else:
            self.saturated = True
            if digest < self.ceiling:
                del self.followers[self.ceiling]
                self.followers[digest] = followers
                self.ceiling = max(self.followers)

    def _add_top(self, digest: int, followers: int, heavy: int) -> None:
        if len(self.top) == heavy and followers <= self.top_floor:
            return
        if digest in self.top or len(self.top) < heavy:
            self.top[digest] = max(followers, self.top.get(digest, 0))
        else:
            del self.top[min(self.top, key=self.top.__getitem__)]
            self.top[digest] = followers
        if len(self.top) == heavy:
            self.top_floor = min(self.top.values())

    def unique(self) -> int:
        if not self.saturated:
            return len(self.followers)
        return round((len(self.followers) - 1) * HASH_SPACE / (self.ceiling + 1))

    def reach(self) -> int:
        if not self.saturated:
            return sum(self.followers.values())
        rest = sum(f for digest, f in self.followers.items() if digest not in self.top)
        return sum(self.top.values()) + round(rest * self.unique() / len(self.followers))


class WindowAgg(msgspec.Struct):
    """One open window of one brand. Flagged posts only count in `flagged*`."""

    start: int
    end: int
    posts: int = 0
    authors: AuthorSample = msgspec.field(default_factory=AuthorSample)
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


class Incident(msgspec.Struct):
    id: str
    kind: str
    started: int  # start of the first anomalous window
    quiet_windows: int = 0


class ShareLevel(msgspec.Struct):
    """An exponentially weighted share over windows, weighted by their posts: quiet windows count little.

    `hits` and `posts` are the weighted sums of negative and all posts (weight alpha * (1 - alpha)^age), and
    `square` that of posts with the squared weights, so the share's binomial variance is
    p (1 - p) * square / posts^2 however the volume varied (Kish's effective sample size posts^2 / square).
    """

    hits: float = 0.0
    posts: float = 0.0
    square: float = 0.0
    windows: int = 0

    def update(self, hits: int, posts: int, alpha: float) -> None:
        keep = 1 - alpha
        self.hits = keep * self.hits + alpha * hits
        self.posts = keep * self.posts + alpha * posts
        self.square = keep * keep * self.square + alpha * alpha * posts
        self.windows += 1

    def share(self) -> float | None:
        return self.hits / self.posts if self.posts > 0 else None

    def sampling_var(self, share: float) -> float:
        return share * (1 - share) * self.square / self.posts**2 if self.posts > 0 else math.inf


class Drift(msgspec.Struct):
    """The slow negativity detector's state (stream/brands/drift.py): a recent and a long level."""

    recent: ShareLevel = msgspec.field(default_factory=ShareLevel)
    usual: ShareLevel = msgspec.field(default_factory=ShareLevel)
    # EWMA of windows' squared Pearson residuals against the recent level: variation beyond binomial noise
    # (1 when there is none, the prior it starts from).
    dispersion: float = 1.0
    # Consecutive windows over the opening threshold.
    streak: int = 0
    incident: Incident | None = None
    cooldown_until: int = 0


class Baseline(msgspec.Struct):
    volume: Ewma = msgspec.field(default_factory=Ewma)
    negativity: Ewma = msgspec.field(default_factory=Ewma)
    # term -> EWMA share of posts containing it.
    terms: dict[str, float] = msgspec.field(default_factory=dict)


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
    # Sustained shifts, against hours of history; its incidents are apart from the bursts' above.
    drift: Drift = msgspec.field(default_factory=Drift)
    # The mentions-topic offset of the last record applied here: a record replayed after a restore (the
    # state was flushed past the committed offset) is not counted twice. Its brand's records all come from
    # one partition, in order.
    applied_offset: int = -1
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
    # The mentions-topic offset it came from (-1: none): the same post at another offset is an upstream repeat.
    offset: int = -1


class AuthorState(msgspec.Struct):
    events: list[AuthorEvent] = msgspec.field(default_factory=list)
    level: str = "none"


# --------------------------------------------------------------------------------------------- outputs


class Window(msgspec.Struct, frozen=True):
    kind: Literal["tumbling", "hopping"]
    start: int  # epoch ms, inclusive
    end: int  # epoch ms, exclusive


class Band(msgspec.Struct, frozen=True):
    mean: float
    low: float
    high: float


class Expected(msgspec.Struct, frozen=True, kw_only=True):
    """What the detectors held a tumbling window against, before it entered their baselines (None: still
    warming up, or too few posts)."""

    # The burst baseline: mean -+ z_threshold deviations (negativity's high also needs min_negativity_rise).
    volume: Band | None = None
    negativity: Band | None = None
    # The shift detector: the recent smoothed negative share, and the long baseline's band it must leave.
    negativity_level: float | None = None
    negativity_usual: Band | None = None


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
    # Tumbling windows only; records written before it decode with the default.
    expected: Expected | None = None


class Signal(msgspec.Struct, frozen=True):
    metric: Literal["volume", "negativity"]
    observed: float
    baseline_mean: float
    baseline_std: float
    z: float
    # "short": the window against the EWMA of the last ~10 windows; "long": the recent level against hours.
    baseline: Literal["short", "long"] = "short"


class TermLift(msgspec.Struct, frozen=True):
    term: str
    posts: int
    window_share: float
    baseline_share: float
    lift: float


class StoryRef(msgspec.Struct, frozen=True, kw_only=True):
    """A story named by an alert: its size in the alert's window and how much of it is new."""

    story_id: str
    label: str
    posts: int  # in the alert's window
    negative_share: float  # of those posts
    # Posts (negative posts, for negativity and crisis alerts) above the story's mean of its previous windows.
    growth: float
    total_posts: int
    top_terms: list[str]

    def describe(self) -> str:
        """One line for people: "story: 'charged twice after the app update', 140 posts, 82 % negative"."""
        return f"story: '{self.label}', {self.posts} posts, {round(100 * self.negative_share)} % negative"


AlertKind = Literal["volume_spike", "negativity_spike", "crisis", "negativity_shift"]
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
    # The stories (stream/brands/stories.py) whose growth explains most of the window; empty on `resolved`.
    stories: list[StoryRef] = msgspec.field(default_factory=list)


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


StoryEvent = Literal["born", "growing", "faded"]


class StoryUpdate(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="story"):
    """A story's change, published on `social.stories` at the close of the tumbling window it happened in."""

    story_id: str
    brand: str
    event: StoryEvent
    window: Window
    label: str
    posts: int  # in `window`
    # Posts per tumbling window, oldest first, ending with `window` (at most the story's history).
    sizes: list[int]
    previous_mean: float  # posts per window over the windows before `window`
    total_posts: int
    sentiment: dict[str, int]
    sentiment_mix: dict[str, float]
    top_terms: list[str]
    # The posts closest to the story's centroid, then its posts by the most-followed authors.
    representatives: list[Example]
    top_followed: list[Example]
    first_seen: int
    last_seen: int
    # On `faded`: the story it was merged into, when its centroid came to match another story's.
    merged_into: str | None = None


# ------------------------------------------------------------------------------------- share of voice


class MemberWindow(msgspec.Struct, frozen=True, array_like=True):
    """One closed tumbling window of one brand, as its competitor sets count it."""

    start: int
    posts: int  # unflagged mentions
    negative: int
    reach: int


class ShareContribution(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="share_contribution"):
    """Internal (settings.share_topic, keyed by set): a member brand's windows closed since its last
    contribution, and how far it has closed (`closed_until`: every tumbling window ending at or before it;
    a window of it that is not in `windows` had no mention)."""

    competitor_set: str
    brand: str
    closed_until: int
    windows: list[MemberWindow]


class ShareState(msgspec.Struct):
    """One competitor set's windows waiting for their members (stream/brands/share.py)."""

    # member -> the closed_until it last reported.
    progress: dict[str, int] = msgspec.field(default_factory=dict)
    # window start -> member -> its counts; bounded by MonitorConfig.share_max_pending_windows.
    pending: dict[int, dict[str, MemberWindow]] = msgspec.field(default_factory=dict)
    # Windows ending at or before this are published; a contribution to one of them is a repeat or too late.
    published_until: int = 0


class BrandShare(msgspec.Struct, frozen=True, kw_only=True):
    brand: str
    mentions: int
    negative: int
    reach: int
    # Of the set's total; None when that total is 0 (see ShareOfVoice.empty).
    mention_share: float | None
    negative_share: float | None
    reach_share: float | None


class ShareOfVoice(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="share_of_voice"):
    """Per competitor set and tumbling window, each member's share (on social.brand_stats, keyed by set)."""

    competitor_set: str
    window: Window
    # Every member, in the set's order; a member without mentions in the window counts 0.
    brands: list[BrandShare]
    mentions: int
    negative: int
    reach: int
    # Members that had not closed the window when it was published (counted as 0).
    missing: list[str] = msgspec.field(default_factory=list)
    # Measures ("mentions", "negative", "reach") whose set total is 0: their shares are null.
    empty: list[str] = msgspec.field(default_factory=list)


Output = BrandStats | Alert | AuthorEscalation | FlaggedMention | StoryUpdate | ShareOfVoice
