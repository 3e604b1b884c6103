"""Validation never raises: whatever the bytes, the answer is a valid post or a rejection with a reason.

Issue 13: a 2 kB record whose unknown field held JSON nested 1,000 deep made msgspec raise RecursionError
out of `validate`, so the record was never dead-lettered.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.language import primary_language
from stream.schema import RejectReason
from stream.validate import Rejection, SourceRef, Validator, ValidPost


def fake_detector(text: str) -> tuple[str, float]:
    return ("en", 0.97)


def exploding_detector(text: str) -> tuple[str, float]:
    raise RuntimeError("language model crashed")


def validator(detector: object = fake_detector) -> Validator:
    return Validator(
        detect_language=detector,  # type: ignore[arg-type]
        parse_language_tag=primary_language,
        served_languages=frozenset({"en"}),
        language_min_confidence=0.8,
        max_record_bytes=1_000_000,
        max_text_chars=10_000,
        dedupe_window=1_000,
    )


VALID = {"id": "p1", "text": "hello there", "created_at": 1_764_000_000_000, "author": {"id": "a"}, "platform": "x"}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [1_000, 5_000, 100_000])
@pytest.mark.parametrize("field", ["junk", "text", "author", "brand", "created_at", "id"])
def test_deep_nesting_in_any_field_is_rejected_not_raised(depth: int, field: str) -> None:
    fields = {**{name: json.dumps(value) for name, value in VALID.items()}, field: nested(depth)}
    raw = ("{" + ",".join(f'"{name}":{value}' for name, value in fields.items()) + "}").encode()
    result = validator().validate(raw, SourceRef("t", 0, 1))
    assert isinstance(result, Rejection)
    assert result.reason in {RejectReason.INVALID_JSON, RejectReason.WRONG_TYPE}
    assert result.detail


def test_an_unexpected_error_becomes_internal_error() -> None:
    raw = json.dumps({key: value for key, value in VALID.items()}).encode()
    result = validator(exploding_detector).validate(raw, SourceRef("t", 0, 1))
    assert isinstance(result, Rejection) and result.reason == RejectReason.INTERNAL_ERROR
    assert "language model crashed" in result.detail


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
post_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "text": json_values,
        "created_at": json_values,
        "author": json_values | st.fixed_dictionaries({"id": json_values}, optional={"followers": json_values}),
        "platform": json_values,
        "lang": json_values,
        "brand": json_values,
    },
)


def assert_answers(raw: bytes | None) -> None:
    result = validator().validate(raw, SourceRef("t", 0, 1))
    assert isinstance(result, ValidPost | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in set(RejectReason) and result.detail


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2_000))
def test_random_bytes_always_get_an_answer(raw: bytes) -> None:
    assert_answers(raw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(post_like)
def test_random_json_shapes_always_get_an_answer(value: dict[str, object]) -> None:
    assert_answers(json.dumps(value, allow_nan=True).encode())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["\ufeff", "\x00", "\ud800", ""]))
def test_text_with_boms_nuls_and_surrogates_gets_an_answer(text: str, oddity: str) -> None:
    value = {**VALID, "text": oddity + text + oddity}
    assert_answers(json.dumps(value).encode("utf-8", "surrogatepass"))
    assert_answers(oddity.encode("utf-8", "surrogatepass") + json.dumps(value).encode())
