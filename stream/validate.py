"""Validation at the edge: raw record bytes become a valid post or a dead-letter reason, never a crash."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec

from stream.schema import Post, RejectReason

# A language detector: text -> (ISO 639 code, confidence in 0..1).
LanguageDetector = Callable[[str], tuple[str, float]]
# A language tag parser: BCP 47 tag -> primary language code, or None for a tag that is not registered.
LanguageTagParser = Callable[[str], str | None]

# Timestamps before 2000 or beyond 2100 are almost surely seconds-vs-milliseconds mistakes.
EARLIEST_MS = 946_684_800_000
LATEST_MS = 4_102_444_800_000


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record came from; identical on redelivery, so a redelivery is not a duplicate."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ValidPost:
    post: Post
    created_at_ms: int
    language: str
    brands: list[str]


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str


class RecentIds:
    """Bounded memory of post ids and where each was first seen."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[str, SourceRef] = OrderedDict()

    def first_seen(self, post_id: str, source: SourceRef) -> SourceRef:
        """Remember `source` for a new id; return where the id was first seen."""
        if post_id in self._seen:
            self._seen.move_to_end(post_id)
            return self._seen[post_id]
        self._seen[post_id] = source
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return source


def parse_created_at(value: str | int) -> int | None:
    if isinstance(value, int):
        millis = value
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        millis = int(parsed.timestamp() * 1000)
    return millis if EARLIEST_MS <= millis <= LATEST_MS else None


def brand_hints(brand: list[str] | str | None) -> list[str]:
    if brand is None:
        return []
    names = [brand] if isinstance(brand, str) else brand
    return list(dict.fromkeys(name.strip() for name in names if name.strip()))


class Validator:
    def __init__(
        self,
        detect_language: LanguageDetector,
        parse_language_tag: LanguageTagParser,
        served_languages: frozenset[str],
        language_min_confidence: float,
        max_record_bytes: int,
        max_text_chars: int,
        dedupe_window: int,
        max_id_chars: int = 256,
        max_brand_hints: int = 16,
        max_brand_chars: int = 100,
    ) -> None:
        self._detect_language = detect_language
        self._parse_language_tag = parse_language_tag
        # Empty means the model serves every language.
        self._served_languages = served_languages
        self._language_min_confidence = language_min_confidence
        self._max_record_bytes = max_record_bytes
        self._max_text_chars = max_text_chars
        self._recent_ids = RecentIds(dedupe_window)
        self._max_id_chars = max_id_chars
        self._max_brand_hints = max_brand_hints
        self._max_brand_chars = max_brand_chars
        self._decoder = msgspec.json.Decoder(Post)

    def validate(self, raw: bytes | None, source: SourceRef) -> ValidPost | Rejection:
        """Never raises: an error no rule names becomes an `internal_error` rejection with its repr."""
        try:
            return self._validate(raw, source)
        except Exception as error:
            return Rejection(RejectReason.INTERNAL_ERROR, f"validation raised {error!r}"[:1000])

    def _validate(self, raw: bytes | None, source: SourceRef) -> ValidPost | Rejection:
        if raw is None:
            return Rejection(RejectReason.INVALID_JSON, "record has no value (tombstone)")
        if len(raw) > self._max_record_bytes:
            return Rejection(RejectReason.RECORD_TOO_LARGE, f"{len(raw)} bytes > {self._max_record_bytes}")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return Rejection(RejectReason.INVALID_UTF8, str(error))
        try:
            post = self._decoder.decode(raw)
        except msgspec.ValidationError as error:
            message = str(error)
            reason = RejectReason.MISSING_FIELD if "missing required field" in message else RejectReason.WRONG_TYPE
            return Rejection(reason, message)
        except msgspec.DecodeError as error:
            return Rejection(RejectReason.INVALID_JSON, str(error))
        except RecursionError:
            # msgspec walks nesting recursively, unknown fields included; 1,000 levels in 2 kB was enough.
            return Rejection(RejectReason.INVALID_JSON, "JSON nested deeper than the decoder's recursion limit")
        return self._check_post(post, source)

    def _check_post(self, post: Post, source: SourceRef) -> ValidPost | Rejection:
        if not post.text.strip():
            return Rejection(RejectReason.EMPTY_TEXT, "text is empty or whitespace")
        if len(post.text) > self._max_text_chars:
            return Rejection(RejectReason.TEXT_TOO_LONG, f"{len(post.text)} characters > {self._max_text_chars}")
        for name, value in (("id", post.id), ("author.id", post.author.id)):
            if len(value) > self._max_id_chars:
                return Rejection(RejectReason.FIELD_TOO_LONG, f"{name}: {len(value)} characters > {self._max_id_chars}")
        brands = brand_hints(post.brand)
        if len(brands) > self._max_brand_hints:
            return Rejection(RejectReason.TOO_MANY_BRANDS, f"{len(brands)} brand hints > {self._max_brand_hints}")
        if (longest := max((len(b) for b in brands), default=0)) > self._max_brand_chars:
            return Rejection(
                RejectReason.FIELD_TOO_LONG, f"a brand hint of {longest} characters > {self._max_brand_chars}"
            )
        created_at_ms = parse_created_at(post.created_at)
        if created_at_ms is None:
            return Rejection(
                RejectReason.BAD_TIMESTAMP,
                f"created_at {post.created_at!r} is not RFC 3339 with a zone nor epoch ms in 2000..2100",
            )
        language = self._language_of(post)
        if isinstance(language, Rejection):
            return language
        first = self._recent_ids.first_seen(post.id, source)
        if first != source:
            return Rejection(
                RejectReason.DUPLICATE_ID,
                f"id {post.id!r} first seen at {first.topic}[{first.partition}]@{first.offset}",
            )
        return ValidPost(post=post, created_at_ms=created_at_ms, language=language, brands=brands)

    def _language_of(self, post: Post) -> str | Rejection:
        if post.lang is not None:
            language = self._parse_language_tag(post.lang)
            if language is None:
                return Rejection(RejectReason.UNKNOWN_LANGUAGE, f"lang {post.lang!r} is not a registered BCP 47 tag")
            confident = True
        else:
            language, confidence = self._detect_language(post.text)
            confident = confidence >= self._language_min_confidence
        if self._served_languages and confident and language not in self._served_languages:
            return Rejection(
                RejectReason.UNSUPPORTED_LANGUAGE,
                f"language {language!r} is not served by the model (serves {sorted(self._served_languages)})",
            )
        return language
