"""Per-brand spans of multi-brand posts: where texts are cut, which sentiment each brand gets, and the measured
gain over the post-level label on the hand-written set (models/data/multibrand/)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from stream.brands.aspects import BrandSpan, Scored, brand_sentiments, split_brands
from stream.brands.aspects_eval import SPLITS, evaluate, load_split, onnx_classify
from stream.brands.query import BrandCatalog


def spans_of(text: str, brands: list[str], terms: dict[str, frozenset[str]] | None = None) -> dict[str, str]:
    found = split_brands(text, brands, terms)
    assert found is not None
    return {span.brand: span.text for span in found}


def test_switch_is_cut_before_to() -> None:
    text = "Switched from Acme to Globex last month and honestly so much better"
    assert spans_of(text, ["Acme", "Globex"]) == {
        "Acme": "Switched from Acme",
        "Globex": "to Globex last month and honestly so much better",
    }


def test_the_strongest_marker_wins() -> None:
    # A sentence end beats the comma and "than" in the same gap; a contrast word beats a comparison.
    assert spans_of("Acme is slower, than I hoped. Globex is fine", ["Acme", "Globex"]) == {
        "Acme": "Acme is slower, than I hoped.",
        "Globex": "Globex is fine",
    }
    assert spans_of("Acme is better than I said but Globex is not", ["Acme", "Globex"])["Globex"] == (
        "but Globex is not"
    )
    assert spans_of("Globex is way better than Acme for support", ["Globex", "Acme"]) == {
        "Globex": "Globex is way better",
        "Acme": "than Acme for support",
    }


def test_a_brand_named_twice_joins_its_segments() -> None:
    text = "Moving from T-Mobile to Verizon next week, T-Mobile coverage here is a joke"
    assert spans_of(text, ["T-Mobile", "Verizon"]) == {
        "T-Mobile": "Moving from T-Mobile T-Mobile coverage here is a joke",
        "Verizon": "to Verizon next week,",
    }


def test_listed_brands_share_a_segment() -> None:
    assert split_brands("Both Acme and Globex lost my package", ["Acme", "Globex"]) is None
    spans = spans_of(
        "Acme, Globex and Initech quoted. Umbrella never replied", ["Acme", "Globex", "Initech", "Umbrella"]
    )
    assert spans["Acme"] == spans["Globex"] == spans["Initech"] == "Acme, Globex and Initech quoted."
    assert spans["Umbrella"] == "Umbrella never replied"


def test_no_spans_unless_two_brands_are_located_and_cut() -> None:
    assert split_brands("Acme is great", ["Acme"]) is None
    # A hinted brand the text never names keeps the post's label.
    assert split_brands("Acme is great, love it", ["Acme", "Globex"]) is None
    assert split_brands("Netflix documentary on Acme factories", ["Netflix", "Acme"]) is None


def test_longest_name_first_and_query_terms_locate_brands() -> None:
    spans = spans_of("Apple Music sounds better, Spotify is cheaper", ["Apple", "Apple Music", "Spotify"])
    assert spans == {"Apple Music": "Apple Music sounds better,", "Spotify": "Spotify is cheaper"}
    catalog = BrandCatalog.from_mapping({"Apple": "iphone OR #apple", "Google": "pixel OR google"})
    assert catalog.brand_terms["Apple"] == frozenset({"iphone", "apple"})
    text = "Ditched my iPhone for a Pixel, the camera is unreal"
    assert spans_of(text, ["Apple", "Google"], dict(catalog.brand_terms)) == {
        "Apple": "Ditched my iPhone",
        "Google": "for a Pixel, the camera is unreal",
    }


NEGATIVE = Scored("negative", {"negative": 0.8, "neutral": 0.15, "positive": 0.05})
NEUTRAL = Scored("neutral", {"negative": 0.2, "neutral": 0.7, "positive": 0.1})
POSITIVE = Scored("positive", {"negative": 0.1, "neutral": 0.2, "positive": 0.7})


def test_neutral_side_of_two_takes_the_opposite() -> None:
    spans = [BrandSpan("Uber", "Uber driver cancelled three times,"), BrandSpan("Lyft", "Lyft picked me up")]
    result = brand_sentiments(spans, [NEGATIVE, NEUTRAL])
    assert result["Uber"] == NEGATIVE
    assert result["Lyft"] == Scored("positive", {"negative": 0.05, "neutral": 0.15, "positive": 0.8})


def test_polar_or_all_neutral_spans_keep_their_own() -> None:
    two = [BrandSpan("Acme", "a"), BrandSpan("Globex", "b")]
    assert brand_sentiments(two, [POSITIVE, POSITIVE]) == {"Acme": POSITIVE, "Globex": POSITIVE}
    assert brand_sentiments(two, [NEUTRAL, NEUTRAL]) == {"Acme": NEUTRAL, "Globex": NEUTRAL}
    three = [*two, BrandSpan("Initech", "c")]
    assert brand_sentiments(three, [NEGATIVE, NEUTRAL, POSITIVE]) == {
        "Acme": NEGATIVE,
        "Globex": NEUTRAL,
        "Initech": POSITIVE,
    }


def test_the_set_is_as_its_readme_says() -> None:
    posts = {split: load_split(split) for split in SPLITS}
    assert [len(posts[split]) for split in SPLITS] == [82, 81]
    assert all(2 <= len(post.labels) <= 4 for split in SPLITS for post in posts[split])
    labels = {label for split in SPLITS for post in posts[split] for label in post.labels.values()}
    assert labels == {"negative", "neutral", "positive"}


@pytest.mark.default_model
def test_per_brand_spans_beat_the_post_label(default_model: Path) -> None:
    """Measured with the shipped int8 model (docs/BRANDS.md): accuracy +0.22 (dev) and +0.19 (held-out test),
    macro-F1 +0.19 and +0.16. The asserted margin is well under both, so model rebuilds do not flake it."""
    results = evaluate(onnx_classify(default_model))
    for split in SPLITS:
        assert results[split]["accuracy_gain"] >= 0.08, results[split]
        assert results[split]["macro_f1_gain"] >= 0.08, results[split]


def test_backtest_mentions_carry_each_brands_sentiment() -> None:
    from stream.brands.backtest import Classification, brand_mentions, validate_records
    from stream.settings import Settings
    from stream.worker import build_validator

    # The whole post reads positive; its Uber span negative, its Lyft span neutral.
    spans = {"Uber driver cancelled three times,": NEGATIVE, "Lyft picked me up in 4 minutes": NEUTRAL}

    def classify(texts: Sequence[str]) -> list[Classification]:
        return [Classification(s.label, s.scores) for s in (spans.get(t, POSITIVE) for t in texts)]

    post = {
        "id": "p1",
        "text": "Uber driver cancelled three times, Lyft picked me up in 4 minutes",
        "created_at": 1_700_000_000_000,
        "author": {"id": "a"},
        "platform": "x",
        "lang": "en",
    }
    catalog = BrandCatalog.from_mapping({"Uber": "uber", "Lyft": "lyft"})
    valid, _ = validate_records([json.dumps(post).encode()], build_validator(Settings()))
    mentions = {m.brand: m for m in brand_mentions(valid, catalog, classify)}
    assert {brand: (m.sentiment, m.post_sentiment) for brand, m in mentions.items()} == {
        "Uber": ("negative", "positive"),
        "Lyft": ("positive", "positive"),
    }
