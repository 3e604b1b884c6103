"""Every kind of bad input gets its reason code; good input passes with normalised fields."""

from __future__ import annotations

import msgspec
import pytest

from models.language import primary_language
from stream.schema import RejectReason
from stream.validate import Rejection, SourceRef, Validator, ValidPost, parse_created_at


def fake_detector(text: str) -> tuple[str, float]:
    # Deterministic stand-in for the fastText detector: French if the post says "bonjour".
    return ("fr", 0.99) if "bonjour" in text.lower() else ("en", 0.97)


def make_validator(**overrides: object) -> Validator:
    options: dict[str, object] = {
        "detect_language": fake_detector,
        "parse_language_tag": primary_language,
        "served_languages": frozenset({"en"}),
        "language_min_confidence": 0.8,
        "max_record_bytes": 10_000,
        "max_text_chars": 500,
        "dedupe_window": 100,
    }
    options.update(overrides)
    return Validator(**options)  # type: ignore[arg-type]


def post(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "p1",
        "text": "Loving the new phone from @acme",
        "created_at": "2026-11-28T10:00:00Z",
        "author": {"id": "u1", "followers": 10},
        "platform": "x",
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def src(offset: int = 0) -> SourceRef:
    return SourceRef("social.posts", 0, offset)


def check(raw: bytes, validator: Validator | None = None, offset: int = 0) -> ValidPost | Rejection:
    return (validator or make_validator()).validate(raw, src(offset))


def encode(value: object) -> bytes:
    return msgspec.json.encode(value)


def test_valid_post_is_normalised() -> None:
    result = check(encode(post(brand="Acme")))
    assert isinstance(result, ValidPost)
    assert result.created_at_ms == 1_795_860_000_000
    assert result.language == "en"
    assert result.brands == ["Acme"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not utf-8", RejectReason.INVALID_UTF8),
        (b'{"id": "p1", "text": ', RejectReason.INVALID_JSON),
        (b"not json at all", RejectReason.INVALID_JSON),
        (encode([1, 2, 3]), RejectReason.WRONG_TYPE),
        (encode(post(text=None)), RejectReason.MISSING_FIELD),
        (encode(post(author=None)), RejectReason.MISSING_FIELD),
        (encode(post(text=42)), RejectReason.WRONG_TYPE),
        (encode(post(author={"id": "u1", "followers": "many"})), RejectReason.WRONG_TYPE),
        (encode(post(text="   \n ")), RejectReason.EMPTY_TEXT),
        (encode(post(text="x" * 501)), RejectReason.TEXT_TOO_LONG),
        (encode(post(text="y" * 20_000)), RejectReason.RECORD_TOO_LARGE),
        (encode(post(created_at="yesterday")), RejectReason.BAD_TIMESTAMP),
        (encode(post(created_at="2026-11-28T10:00:00")), RejectReason.BAD_TIMESTAMP),
        (encode(post(created_at=1_700_000_000)), RejectReason.BAD_TIMESTAMP),
        (encode(post(lang="klingon")), RejectReason.UNKNOWN_LANGUAGE),
        (encode(post(lang="tlh-klingon")), RejectReason.UNKNOWN_LANGUAGE),
        (encode(post(lang="de")), RejectReason.UNSUPPORTED_LANGUAGE),
        (encode(post(text="Bonjour, le service est nul")), RejectReason.UNSUPPORTED_LANGUAGE),
        # Untrusted sizes (issue 13): each hint becomes a mention carrying the text; ids fill the dedupe memory.
        (encode(post(id="p" * 257)), RejectReason.FIELD_TOO_LONG),
        (encode(post(author={"id": "u" * 257, "followers": 1})), RejectReason.FIELD_TOO_LONG),
        (encode(post(brand=[f"brand-{n}" for n in range(17)])), RejectReason.TOO_MANY_BRANDS),
        (encode(post(brand="b" * 101)), RejectReason.FIELD_TOO_LONG),
    ],
)
def test_bad_input_gets_its_reason(raw: bytes, reason: RejectReason) -> None:
    result = check(raw)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.detail


def test_tombstone_is_rejected_not_crashed() -> None:
    result = make_validator().validate(None, src())
    assert isinstance(result, Rejection) and result.reason == RejectReason.INVALID_JSON


def test_duplicate_id_rejected_but_redelivery_is_not() -> None:
    validator = make_validator()
    raw = encode(post())
    assert isinstance(check(raw, validator, offset=5), ValidPost)
    # The same record redelivered after a rebalance is processed again (same event ids downstream).
    assert isinstance(check(raw, validator, offset=5), ValidPost)
    duplicate = check(raw, validator, offset=9)
    assert isinstance(duplicate, Rejection) and duplicate.reason == RejectReason.DUPLICATE_ID
    assert "@5" in duplicate.detail


def test_dedupe_memory_is_bounded() -> None:
    validator = make_validator(dedupe_window=2)
    for offset, post_id in enumerate(["a", "b", "c"]):
        assert isinstance(check(encode(post(id=post_id)), validator, offset=offset), ValidPost)
    # "a" was evicted, so it is accepted again rather than remembered forever.
    assert isinstance(check(encode(post(id="a")), validator, offset=10), ValidPost)


def test_every_language_served_when_list_empty() -> None:
    validator = make_validator(served_languages=frozenset())
    result = check(encode(post(lang="de")), validator)
    assert isinstance(result, ValidPost) and result.language == "de"


def test_low_confidence_detection_is_not_grounds_for_rejection() -> None:
    validator = make_validator(detect_language=lambda text: ("fr", 0.3))
    assert isinstance(check(encode(post()), validator), ValidPost)


def test_region_tag_is_normalised() -> None:
    result = check(encode(post(lang="EN_us")))
    assert isinstance(result, ValidPost) and result.language == "en"


def test_epoch_millis_and_rfc3339_agree() -> None:
    assert parse_created_at("2026-11-28T10:00:00+00:00") == parse_created_at(1_795_860_000_000)


def test_size_limits_admit_what_they_bound() -> None:
    result = check(encode(post(id="p" * 256, brand=[f"brand-{n}" for n in range(15)] + ["b" * 100])))
    assert isinstance(result, ValidPost) and len(result.brands) == 16
