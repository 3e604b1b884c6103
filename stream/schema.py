"""Wire types: what arrives on the input topic and what leaves on the output topics."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec


class Author(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    id: str
    # Bounded to int64: JSON allows any integer, and readers of the output topics in other languages do not.
    followers: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


class Post(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A social post as published to the input topic (`social.posts`)."""

    id: str
    text: str
    # RFC 3339 string or epoch milliseconds; normalised to epoch ms by validation.
    created_at: str | int
    author: Author
    platform: str
    lang: str | None = None
    url: str | None = None
    # Brand hints from the source (e.g. the tracked account that was mentioned).
    brand: list[str] | str | None = None


class RejectReason(enum.StrEnum):
    """Dead-letter reason codes, carried in the `socialpulse.reason` header."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    RECORD_TOO_LARGE = "record_too_large"
    BAD_TIMESTAMP = "bad_timestamp"
    UNKNOWN_LANGUAGE = "unknown_language"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    DUPLICATE_ID = "duplicate_id"
    # An id or brand hint longer than its limit (SOCIALPULSE_MAX_ID_CHARS, _MAX_BRAND_CHARS).
    FIELD_TOO_LONG = "field_too_long"
    # More brand hints than SOCIALPULSE_MAX_BRAND_HINTS: each would become a mention carrying the whole text.
    TOO_MANY_BRANDS = "too_many_brands"
    # The post alone made the model fail; kept so one poison record cannot stop the stream.
    INFERENCE_FAILED = "inference_failed"
    # Handling the record raised something no rule above names: a bug of ours, kept replayable in the DLQ.
    INTERNAL_ERROR = "internal_error"
    # A mentions-topic record the brand monitor cannot decode (not written by socialpulse, or corrupted).
    INVALID_MENTION = "invalid_mention"


class Timestamps(msgspec.Struct, frozen=True):
    created_at: int  # epoch ms, from the post
    ingested_at: int  # epoch ms, when the worker received the record
    emitted_at: int  # epoch ms, when the event was handed to the producer


class ModelRef(msgspec.Struct, frozen=True):
    name: str
    version: str
    variant: str


class PostEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What every per-post event carries; `event_id` is the same each time the post is processed."""

    event_id: str
    post_id: str
    brands: list[str]
    language: str
    model: ModelRef
    timestamps: Timestamps
    platform: str
    author_id: str
    truncated: bool = False


class SentimentEvent(PostEvent, frozen=True, kw_only=True):
    label: str
    scores: dict[str, float]
    type: str = "sentiment"


class BehaviourEvent(PostEvent, frozen=True, kw_only=True):
    # Labels whose score crossed the model's per-label threshold.
    labels: list[str]
    scores: dict[str, float]
    type: str = "behaviour"


class BrandMention(msgspec.Struct, frozen=True):
    """One (post, brand) pair, keyed by brand, for windowed aggregation and alerting.

    `sentiment` and `sentiment_scores` are the brand's: in a post naming several brands, those of the part
    of the text about it (docs/BRANDS.md, Per-brand sentiment); `post_sentiment` is the whole post's label."""

    post_id: str
    brand: str
    text: str
    created_at: int
    author_id: str
    followers: int
    platform: str
    language: str
    sentiment: str
    sentiment_scores: dict[str, float]
    behaviours: list[str]
    behaviour_scores: dict[str, float]
    # The pooled embedding as little-endian float16 (base64 in JSON); see emit.compact_embedding.
    embedding_f16: bytes | None = None
    # None in mentions written before per-brand sentiment.
    post_sentiment: str | None = None
