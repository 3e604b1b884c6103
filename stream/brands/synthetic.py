"""Synthetic brand streams built from real posts: the human-rated tweets, given brands, authors and times.

Texts and sentiment are real (the ICWSM-2014 tweets and their mean human rating); which brand a post
mentions, who wrote it and when are drawn here (seeded). Posts carry their labels (`sentiment`,
`sentiment_scores`, `behaviours`), which the backtest uses instead of the model when present, so detector
tests exercise matching, aggregation and alerting on real text without the model.
"""

from __future__ import annotations

import math
import random
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


def synthetic_posts(spec: StreamSpec, tweets: list[RatedTweet]) -> list[dict[str, object]]:
    """Posts in event-time order, as JSON-ready dicts in the input topic's schema plus labels."""
    rng = random.Random(spec.seed)
    negative = [t for t in tweets if t.score <= -1.0]
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

    def poisson(rate: float, start: float, end: float) -> list[float]:
        times: list[float] = []
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                return times
            times.append(t)

    for brand in spec.brands:
        for t in poisson(spec.per_minute, 0.0, spec.minutes):
            emit(t, brand, tweets, 0.4)
    unbranded = spec.per_minute * len(spec.brands) * spec.unbranded_share
    for t in poisson(unbranded, 0.0, spec.minutes) if unbranded else []:
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
