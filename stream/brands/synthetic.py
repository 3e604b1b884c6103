"""Synthetic brand streams built from real posts: the human-rated tweets, given brands, authors and times.

Texts and sentiment are real (the ICWSM-2014 tweets and their mean human rating); which brand a post
mentions, who wrote it and when are drawn here (seeded). Posts carry their labels (`sentiment`,
`sentiment_scores`, `behaviours`), which the backtest uses instead of the model when present, so detector
tests exercise matching, aggregation and alerting on real text without the model.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from stream.settings import REPO_ROOT

CORPUS_TWEETS = REPO_ROOT / ".cache/data/hutto_ICWSM_2014/tweets_GroundTruth.txt"
# 400 of those tweets, committed, for checkouts without the downloaded corpus.
SAMPLE_TWEETS = REPO_ROOT / "tests/data/rated_tweets_sample.tsv"
BRANDS = ("Acme", "Globex", "Initech", "Umbrella")
PLATFORMS = ("x", "bluesky", "mastodon", "reddit")
TEMPLATES = ("{text} @{handle}", "{text} #{brand}", "{brand}: {text}", "@{handle} {text}", "{text} ({brand})")
# Injected topics, for story evaluation: a topic post is one phrase from each slot, picked at random, then
# (half the time) the opening words of a random real negative tweet, so a topic's posts share a theme but
# seldom a text (and the near-duplicate filter lets them through).
TOPICS: dict[str, tuple[tuple[str, ...], ...]] = {
    "double_charge": (
        ("", "ugh", "seriously", "so", "hey", "wow", "great,", "of course"),
        ("charged twice", "double charged", "billed two times", "two charges on my card", "paid twice", "billed twice"),
        (
            "after the app update",
            "since the latest update",
            "after updating the app",
            "with the new version",
            "since yesterday's update",
            "right after the update",
        ),
        (
            "still no refund",
            "I want my money back",
            "support is silent",
            "check your billing",
            "refund me",
            "this is theft",
            "",
        ),
    ),
    "outage": (
        ("", "ugh", "seriously", "so", "hey", "wow", "great,", "again"),
        (
            "the app is down",
            "can't log in",
            "login keeps failing",
            "servers are down",
            "the site won't load",
            "app keeps crashing on login",
        ),
        ("again this morning", "for hours now", "all day", "since 9am", "for the third time this week", "since lunch"),
        (
            "anyone else?",
            "totally unusable",
            "fix your servers",
            "error 503 everywhere",
            "status page says ok",
            "nothing works",
            "",
        ),
    ),
    "lost_parcel": (
        ("", "ugh", "seriously", "so", "hey", "wow", "great,", "still"),
        (
            "my package never arrived",
            "order still not delivered",
            "tracking says delivered but nothing here",
            "parcel lost in transit",
            "no sign of my delivery",
            "my order vanished",
        ),
        (
            "after three weeks",
            "for the second time",
            "and the courier lost it",
            "two weeks late",
            "since last month",
            "after paying for express",
        ),
        (
            "where is my stuff",
            "shipping is a joke",
            "nobody can tell me where it is",
            "I want a replacement",
            "never ordering again",
            "",
        ),
    ),
}


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
    # A key of TOPICS: the burst's posts are about it (and carry `"topic"`); else real negative tweets.
    topic: str | None = None


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

    def emit(
        t_min: float, brand: str | None, pool: list[RatedTweet], complaint_p: float, topic: str | None = None
    ) -> None:
        tweet = rng.choice(pool)
        text = tweet.text
        if topic is not None:
            tweet = RatedTweet(topic_text(topic, tweet.text, rng), -2.0)
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
        post: dict[str, object] = {
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
        if topic is not None:
            post["topic"] = topic
        posts.append(post)

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
            emit(t, burst.brand, negative, 0.7, burst.topic)
    posts.sort(key=lambda p: (p["created_at"], p["id"]))  # type: ignore[arg-type,return-value]
    return posts


def topic_text(topic: str, tweet: str, rng: random.Random) -> str:
    """A post about `topic`: a phrase per slot of TOPICS[topic], then half the time `tweet`'s first words."""
    words = [rng.choice(slot) for slot in TOPICS[topic]]
    if rng.random() < 0.5:
        words.append(" ".join(tweet.split()[:6]))
    return " ".join(w for w in words if w)


EMBEDDING_DIM = 384


def _direction(name: str, dim: int) -> npt.NDArray[np.float64]:
    seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    vector = np.random.default_rng(seed).standard_normal(dim)
    return vector / np.linalg.norm(vector)


def synthetic_embedding(post_id: str, sentiment: str, topic: str | None, dim: int = EMBEDDING_DIM) -> list[float]:
    """A stand-in for the model's pooled embedding, for tests without the model. Like the real one (see
    stream/brands/stories.py) it is dominated by a direction per sentiment label; a topic post adds its
    topic's direction, and every post its own noise (seeded by its id)."""
    vector = _direction(f"sentiment:{sentiment}", dim) + 0.8 * _direction(f"post:{post_id}", dim)
    if topic is not None:
        vector += 0.9 * _direction(f"topic:{topic}", dim)
    return [float(v) for v in vector / np.linalg.norm(vector)]


def demo_brands_yaml(brands: tuple[str, ...] = BRANDS) -> str:
    lines = ["brands:"]
    for brand in brands:
        handle = brand.lower()
        lines.append(f"  {brand}: '{handle} OR #{handle} OR @{handle}'")
    return "\n".join(lines) + "\n"
