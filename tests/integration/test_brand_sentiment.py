"""Per-brand sentiment through the worker on the real broker: a post naming two brands yields one mention per
brand carrying that brand's own sentiment (its span's, as the same model gives it in process), the post's own
event keeps its label, and every record is accounted for.

The labels themselves depend on the model this machine trained, so they are not written down here; whether
spans beat the post label is measured on the held-out multi-brand set (tests/unit/test_brands_aspects.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from stream.brands.agent import TICK_KEY
from stream.brands.aspects import Scored, brand_sentiments, split_brands
from stream.brands.aspects_eval import onnx_classify
from stream.brands.query import BrandCatalog, post_brands
from stream.schema import BrandMention
from stream.settings import Settings
from stream.tools.kafka_local import LocalKafka
from stream.tools.sample_posts import LabelledRecord, labelled_stream, load_tweet_texts
from stream.validate import SourceRef, ValidPost
from stream.worker import build_validator
from tests.integration.brand_streams import read_records
from tests.integration.harness import REPO_ROOT, Topics, WorkerProcess, produce, read_outputs

pytestmark = pytest.mark.integration

BRANDS_FILE = REPO_ROOT / "deploy/brands/demo.yaml"
# (text, brand hints): two brands set against each other in one post.
MULTI_BRAND = {
    "mb-switch": ("Switched from Acme to Globex last month and honestly so much better", ["Acme", "Globex"]),
    "mb-contrast": ("Acme phone camera is amazing but the Globex one overheats every time I film", ["Acme", "Globex"]),
    # No hints: both brands found by the demo brands file's queries (Apple by "iphone").
    "mb-query": ("Finally ditched my iPhone for a Pixel and Google's camera is unreal", []),
}
# Dynamic int8 quantisation scales each batch by its own range, so a span classified among other posts can
# move by a few hundredths from the same span classified alone: a label is only compared where it is clear.
CLEAR_MARGIN = 0.1


def multi_brand_records() -> list[LabelledRecord]:
    records = []
    for post_id, (text, hints) in MULTI_BRAND.items():
        post = {"id": post_id, "text": text, "created_at": 1_795_860_100_000, "author": {"id": "u", "followers": 1}}
        raw = msgspec.json.encode({**post, "platform": "x", "lang": "en", "brand": hints})
        records.append(LabelledRecord(raw, post_id, None))
    return records


def expected_mentions(valid: list[LabelledRecord]) -> set[tuple[str, str]]:
    """(post id, brand) for every brand the worker finds in the valid posts: hints, then query matches."""
    validator, catalog = build_validator(Settings()), BrandCatalog.from_yaml(BRANDS_FILE)
    pairs = set()
    for offset, record in enumerate(valid):
        result = validator.validate(record.raw, SourceRef("expected", 0, offset))
        assert isinstance(result, ValidPost), result
        pairs.update((record.post_id, brand) for brand in post_brands(result, catalog))
    return pairs


def test_two_brand_posts_give_each_brand_its_own_sentiment(kafka: LocalKafka, tmp_path: Path) -> None:
    topics = Topics()
    records = [*labelled_stream(load_tweet_texts(), 200, malformed_share=0.05, seed=23), *multi_brand_records()]
    valid = [record for record in records if record.expected is None]
    bad = [record for record in records if record.expected is not None]
    pairs = expected_mentions(valid)
    worker = WorkerProcess(
        kafka.bootstrap,
        topics,
        tmp_path,
        "pipeline",
        SOCIALPULSE_BRANDS_FILE=str(BRANDS_FILE),
        SOCIALPULSE_ROLE="pipeline",
    ).start()
    try:
        worker.wait_ready()
        asyncio.run(produce(kafka.bootstrap, topics.posts, records))
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(valid), len(bad), timeout=300))
        found = asyncio.run(read_records(kafka.bootstrap, topics.fields()["mentions_topic"], len(pairs), 120))
    finally:
        assert worker.stop() == 0, worker.log_tail()

    # Every record accounted for: each valid post's event once, each bad record dead-lettered.
    assert sorted(outputs.sentiment_posts()) == sorted(record.post_id for record in valid)
    assert len(outputs.dead_letters) == len(bad)
    post_label = {str(event["post_id"]): str(event["label"]) for event in outputs.sentiment}
    mentions = [msgspec.json.decode(m.value or b"", type=BrandMention) for m in found if m.key != TICK_KEY]
    assert {(m.post_id, m.brand) for m in mentions} == pairs and len(mentions) == len(pairs)

    reference = reference_brand_sentiments(Settings().model_dir)
    spanned = {(m.post_id, m.brand) for m in mentions if m.post_id in MULTI_BRAND}
    assert spanned == {(post_id, brand) for post_id, (own, _) in reference.items() for brand in own}
    for mention in mentions:
        assert mention.post_sentiment == post_label[mention.post_id]
        assert max(mention.sentiment_scores, key=mention.sentiment_scores.__getitem__) == mention.sentiment
        if mention.post_id not in MULTI_BRAND:
            assert mention.sentiment == mention.post_sentiment, "one brand: the post's label stands"
            continue
        own, clear = reference[mention.post_id]
        if clear:
            expected, where = own[mention.brand], (mention.post_id, mention.brand, mention.sentiment_scores)
            assert mention.sentiment == expected.label, (*where, expected)
            assert mention.sentiment_scores == pytest.approx(expected.scores, abs=CLEAR_MARGIN / 2), (*where, expected)
    assert any(clear for _, clear in reference.values()), f"no post is clear enough to compare: {reference}"


def reference_brand_sentiments(model_dir: Path) -> dict[str, tuple[dict[str, Scored], bool]]:
    """Each two-brand post's per-brand sentiment from the model in process (spans by the worker's splitter with
    the brands file's query terms, then the contrast rule), and whether every span's top label leads by
    CLEAR_MARGIN, so that batching cannot change the outcome."""
    catalog = BrandCatalog.from_yaml(BRANDS_FILE)
    classify = onnx_classify(model_dir)
    reference = {}
    for post_id, (text, hints) in MULTI_BRAND.items():
        brands = hints or ["Apple", "Google"]
        spans = split_brands(text, brands, dict(catalog.brand_terms))
        assert spans is not None and {span.brand for span in spans} == set(brands), (post_id, spans)
        scored = classify([span.text for span in spans])
        clear = all(
            top - second >= CLEAR_MARGIN
            for top, second, *_ in (sorted(s.scores.values(), reverse=True) for s in scored)
        )
        reference[post_id] = (brand_sentiments(spans, scored), clear)
    return reference
