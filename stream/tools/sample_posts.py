"""Realistic input streams from real posts: the 4,200 human-rated tweets, plus labelled malformed records.

Used by the demo, the benchmark and the integration tests, so all three replay the same kind of
traffic. Tweet texts are real; ids, authors, platforms, brand hints and timestamps are assigned here
(seeded), because the corpus has none.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from stream.schema import RejectReason

if TYPE_CHECKING:
    from models.corpora import Language

DEMO_BRANDS = ("Acme", "Globex", "Initech", "Umbrella")
PLATFORMS = ("x", "bluesky", "mastodon", "reddit")


@dataclass(frozen=True, slots=True)
class LabelledRecord:
    """A record as it goes on the wire, and what the processor must do with it."""

    raw: bytes
    post_id: str
    # None: a valid post that must come out as events.
    expected: RejectReason | None


@dataclass(frozen=True, slots=True)
class NegativeBurst:
    """Something going wrong for one brand, woven into a stream: after each post between the `start` and
    `end` shares of it, `per_post` posts naming `brand` with texts from `texts` (real negative tweets)."""

    brand: str
    texts: list[str]
    start: float = 0.55
    end: float = 0.65
    per_post: int = 1


@dataclass(frozen=True, slots=True)
class LanguageMix:
    """Posts in another language woven into a stream: a `share` of its posts take their text from `texts`."""

    lang: str
    texts: list[str]
    share: float


def load_held_out_texts(lang: Language) -> list[str]:
    """The held-out split of a training language's corpus (models/corpora.py: never trained on)."""
    from models.corpora import split_language

    _, test = split_language(lang)
    return [row.text for row in test]


def held_out_mix(share: float) -> list[LanguageMix]:
    """Chinese reviews and Spanish tweets, each `share` of a stream: what the multilingual model serves."""
    return [LanguageMix("zh", load_held_out_texts("zh"), share), LanguageMix("es", load_held_out_texts("es"), share)]


def load_tweet_texts(max_score: float | None = None) -> list[str]:
    """The rated tweets' texts; with `max_score`, only those humans rated at or below it (-4..4)."""
    from models.data import load_rated

    return [t.text for t in load_rated("tweets") if max_score is None or t.score <= max_score]


def make_post(
    rng: random.Random, post_id: str, text: str, created_at_ms: int, lang: str | None = "en"
) -> dict[str, object]:
    """A valid post; with `lang` None it carries no hint, so the worker detects its language."""
    post: dict[str, object] = {
        "id": post_id,
        "text": text,
        "created_at": created_at_ms,
        "author": {"id": f"user-{rng.randrange(2_000)}", "followers": int(rng.paretovariate(1.2) * 50)},
        "platform": rng.choice(PLATFORMS),
    }
    if lang is not None:
        post["lang"] = lang
    if rng.random() < 0.6:
        post["brand"] = rng.choice(DEMO_BRANDS)
    return post


def _encode(post: dict[str, object]) -> bytes:
    return msgspec.json.encode(post)


def _with(post: dict[str, object], **changes: object) -> bytes:
    return _encode({**post, **changes})


def _without(post: dict[str, object], field: str) -> bytes:
    return _encode({key: value for key, value in post.items() if key != field})


# Each malformed kind turns a valid post into a record that must be dead-lettered with that reason.
MALFORMED: dict[RejectReason, Callable[[dict[str, object], random.Random], bytes]] = {
    RejectReason.INVALID_UTF8: lambda post, rng: _encode(post).replace(b'"text":"', b'"text":"\xff\xfe', 1),
    RejectReason.INVALID_JSON: lambda post, rng: _encode(post)[: rng.randrange(5, 40)],
    RejectReason.WRONG_TYPE: lambda post, rng: rng.choice(
        [_with(post, text=12345), _with(post, author={"id": "u", "followers": "lots"}), b"[1, 2, 3]"]
    ),
    RejectReason.MISSING_FIELD: lambda post, rng: _without(post, rng.choice(["text", "author", "id", "platform"])),
    RejectReason.EMPTY_TEXT: lambda post, rng: _with(post, text=rng.choice(["", "   ", "\n\t "])),
    RejectReason.TEXT_TOO_LONG: lambda post, rng: _with(post, text="so long " * 1_600),
    RejectReason.RECORD_TOO_LARGE: lambda post, rng: _with(post, text="x" * 600_000),
    RejectReason.BAD_TIMESTAMP: lambda post, rng: _with(post, created_at=rng.choice(["yesterday", "2026-13-45"])),
    RejectReason.UNKNOWN_LANGUAGE: lambda post, rng: _with(post, lang="tlh-klingon"),
    # Dutch: no model here declares it (the multilingual one serves the hand-set languages, French among them).
    RejectReason.UNSUPPORTED_LANGUAGE: lambda post, rng: _with(
        post, text="Eerlijk gezegd is de klantenservice vandaag echt waardeloos", lang="nl"
    ),
}


def labelled_stream(
    texts: list[str],
    count: int,
    malformed_share: float = 0.05,
    seed: int = 7,
    start_ms: int = 1_795_860_000_000,
    burst: NegativeBurst | None = None,
    languages: Sequence[LanguageMix] = (),
) -> list[LabelledRecord]:
    """`count` records: real tweets as valid posts, and a `malformed_share` spread over every bad kind,
    10 ms of event time apart; a `burst` adds its posts (valid, beyond `count`) beside the records it spans.
    With `languages`, each position is, with its mix's share, a post in that language instead of a tweet.

    Duplicate ids are among the bad kinds: a later record reusing an earlier valid post's id.
    """
    rng = random.Random(seed)
    kinds = [*MALFORMED, RejectReason.DUPLICATE_ID]
    bad_positions = set(rng.sample(range(1, count), round(count * malformed_share)))
    records: list[LabelledRecord] = []
    valid_ids: list[str] = []
    for index in range(count):
        post_id = f"post-{seed}-{index}"
        lang, text = _language_of(rng, languages, texts[index % len(texts)])
        post = make_post(rng, post_id, text, start_ms + index * 10, lang)
        if burst is not None and burst.start * count <= index < burst.end * count:
            for k in range(burst.per_post):
                extra = make_post(rng, f"burst-{seed}-{index}-{k}", rng.choice(burst.texts), start_ms + index * 10 + 1)
                extra["brand"] = burst.brand
                records.append(LabelledRecord(_encode(extra), str(extra["id"]), None))
        if index not in bad_positions or not valid_ids:
            records.append(LabelledRecord(_encode(post), post_id, None))
            valid_ids.append(post_id)
            continue
        kind = kinds[len(records) % len(kinds)]
        if kind is RejectReason.DUPLICATE_ID:
            # Keyed by the reused id, like any producer keying by post id: same partition as the original.
            post_id = rng.choice(valid_ids)
            raw = _with(post, id=post_id)
        else:
            raw = MALFORMED[kind](post, rng)
        records.append(LabelledRecord(raw, post_id, kind))
    return records


def _language_of(rng: random.Random, languages: Sequence[LanguageMix], tweet: str) -> tuple[str, str]:
    if not languages:  # no draw: streams without a mix stay what their seed always gave
        return "en", tweet
    draw = rng.random()
    for mix in languages:
        if draw < mix.share:
            return mix.lang, rng.choice(mix.texts)
        draw -= mix.share
    return "en", tweet


def write_jsonl(records: list[LabelledRecord], path: Path) -> Path:
    """One record a line; JSON never holds a raw newline, and malformed records have none either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for record in records:
            handle.write(record.raw.replace(b"\n", b" ") + b"\n")
    return path
