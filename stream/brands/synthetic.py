"""Synthetic brand streams built from real posts: the human-rated tweets, given brands, authors and times.

Texts and sentiment are real (the ICWSM-2014 tweets and their mean human rating); which brand a post
mentions, who wrote it and when are drawn here (seeded). Posts carry their labels (`sentiment`,
`sentiment_scores`, `behaviours`), which the backtest uses instead of the model when present, so detector
tests exercise matching, aggregation and alerting on real text without the model.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stream.settings import REPO_ROOT

CORPUS_TWEETS = REPO_ROOT / ".cache/data/hutto_ICWSM_2014/tweets_GroundTruth.txt"
# 400 of those tweets, committed, for checkouts without the downloaded corpus.
SAMPLE_TWEETS = REPO_ROOT / "tests/data/rated_tweets_sample.tsv"
BRANDS = ("Acme", "Globex", "Initech", "Umbrella")
PLATFORMS = ("x", "bluesky", "mastodon", "reddit")
TEMPLATES = ("{text} @{handle}", "{text} #{brand}", "{brand}: {text}", "@{handle} {text}", "{text} ({brand})")


@dataclass(frozen=True, slots=True)
class RatedTweet:
    text: str
    score: float  # mean human rating, -4..+4


def load_rated_tweets(path: Path | None = None) -> list[RatedTweet]:
    """The full corpus when it has been downloaded (models data step), else the committed sample."""
    import html

    path = path or (CORPUS_TWEETS if CORPUS_TWEETS.is_file() else SAMPLE_TWEETS)
    tweets = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            tweets.append(RatedTweet(html.unescape("\t".join(parts[2:])).strip(), float(parts[1])))
    return tweets


def label_of(score: float) -> str:
    # The corpus's own convention: inclusive +-0.5 is neutral (models.data.sentiment_label).
    return "negative" if score <= -0.5 else ("positive" if score >= 0.5 else "neutral")


def scores_of(score: float) -> dict[str, float]:
    """Class probabilities shaped like the model's, from the human rating."""
    positive = 1 / (1 + math.exp(-2 * (score - 0.5)))
    negative = 1 / (1 + math.exp(2 * (score + 0.5)))
    neutral = max(0.0, 1 - positive - negative)
    total = positive + negative + neutral
    return {k: round(v / total, 4) for k, v in (("negative", negative), ("neutral", neutral), ("positive", positive))}


@dataclass(frozen=True, slots=True)
class Burst:
    brand: str
    start_minute: float
    minutes: float = 3.0
    per_minute: float = 60.0


@dataclass(frozen=True, slots=True)
class Ramp:
    """A gradual change of one brand's traffic: from `start_minute`, over `minutes`, linearly to the target
    negative share and volume (a factor of the brand's rate), which then holds to the end of the stream."""

    brand: str
    start_minute: float
    minutes: float
    negativity: float | None = None
    volume_factor: float = 1.0

    def progress(self, t_min: float) -> float:
        return min(1.0, max(0.0, (t_min - self.start_minute) / self.minutes))


@dataclass(slots=True)
class StreamSpec:
    minutes: float = 60.0
    per_minute: float = 20.0  # per brand
    brands: tuple[str, ...] = BRANDS
    seed: int = 0
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    authors: int = 3000
    unbranded_share: float = 0.2
    bursts: list[Burst] = field(default_factory=list)
    ramps: list[Ramp] = field(default_factory=list)
    # Negative share of the brands' posts (drawn from the negative and the other tweets); None: the corpus's.
    negativity: float | None = None
    # Peak (15:00 UTC) over trough (03:00) of a daily cycle of every rate; 1: constant.
    diurnal: float = 1.0


def synthetic_posts(spec: StreamSpec, tweets: list[RatedTweet]) -> list[dict[str, object]]:
    """Posts in event-time order, as JSON-ready dicts in the input topic's schema plus labels."""
    rng = random.Random(spec.seed)
    negative = [t for t in tweets if t.score <= -1.0]
    labelled_negative = [t for t in tweets if label_of(t.score) == "negative"]
    others = [t for t in tweets if label_of(t.score) != "negative"]
    corpus_share = len(labelled_negative) / len(tweets)
    followers = [int(rng.paretovariate(1.2) * 50) for _ in range(spec.authors)]
    posts: list[dict[str, object]] = []

    def emit(t_min: float, brand: str | None, pool: list[RatedTweet], complaint_p: float) -> None:
        tweet = rng.choice(pool)
        text = tweet.text
        if brand is not None:
            text = rng.choice(TEMPLATES).format(text=text, brand=brand, handle=brand.lower())
        label = label_of(tweet.score)
        behaviours = []
        if label == "negative" and rng.random() < complaint_p:
            behaviours.append("complaint")
        if label == "positive" and rng.random() < 0.3:
            behaviours.append("praise")
        if "?" in tweet.text:
            behaviours.append("question")
        author = rng.randrange(spec.authors)
        posts.append(
            {
                "id": f"s{spec.seed}-{len(posts)}",
                "text": text,
                "created_at": spec.start_ms + int(t_min * 60_000),
                "author": {"id": f"user-{author}", "followers": followers[author]},
                "platform": rng.choice(PLATFORMS),
                "lang": "en",
                "sentiment": label,
                "sentiment_scores": scores_of(tweet.score),
                "behaviours": behaviours,
            }
        )

    # The daily cycle: 1 + depth * sin, so that peak / trough = spec.diurnal.
    depth = (spec.diurnal - 1) / (spec.diurnal + 1)
    day_offset = (spec.start_ms // 60_000) % 1440

    def diurnal(t_min: float) -> float:
        return 1 + depth * math.sin(2 * math.pi * (day_offset + t_min - 540) / 1440)

    def poisson(rate: float, start: float, end: float, shape: Callable[[float], float] | None = None) -> list[float]:
        """Arrivals at `rate` times `shape(t)` (at most `rate` times its bound): thinning of a constant rate."""
        bound = 1.0 if shape is None else (1 + depth) * max([1.0, *(r.volume_factor for r in spec.ramps)])
        times: list[float] = []
        t = start
        while True:
            t += rng.expovariate(rate * bound)
            if t >= end:
                return times
            if shape is None or rng.random() * bound < shape(t):
                times.append(t)

    for brand in spec.brands:
        ramps = [r for r in spec.ramps if r.brand == brand]

        def shape(t_min: float, ramps: list[Ramp] = ramps) -> float:
            factor = math.prod(1 + (r.volume_factor - 1) * r.progress(t_min) for r in ramps)
            return diurnal(t_min) * factor

        varying = depth > 0 or any(r.volume_factor != 1.0 for r in ramps)
        for t in poisson(spec.per_minute, 0.0, spec.minutes, shape if varying else None):
            share = spec.negativity
            for r in ramps:
                if r.negativity is not None and t >= r.start_minute:
                    start = corpus_share if share is None else share
                    share = start + (r.negativity - start) * r.progress(t)
            if share is None:
                emit(t, brand, tweets, 0.4)
            else:
                emit(t, brand, labelled_negative if rng.random() < share else others, 0.4)
    unbranded = spec.per_minute * len(spec.brands) * spec.unbranded_share
    for t in poisson(unbranded, 0.0, spec.minutes, diurnal if depth > 0 else None) if unbranded else []:
        emit(t, None, tweets, 0.4)
    for burst in spec.bursts:
        for t in poisson(burst.per_minute, burst.start_minute, burst.start_minute + burst.minutes):
            emit(t, burst.brand, negative, 0.7)
    posts.sort(key=lambda p: (p["created_at"], p["id"]))  # type: ignore[arg-type,return-value]
    return posts


def demo_brands_yaml(brands: tuple[str, ...] = BRANDS) -> str:
    lines = ["brands:"]
    for brand in brands:
        handle = brand.lower()
        lines.append(f"  {brand}: '{handle} OR #{handle} OR @{handle}'")
    return "\n".join(lines) + "\n"
