"""Posts in many languages through one worker that serves the routed pair (issue 14): English on the default
model, every other language the multilingual model declares on that one, the rest dead-lettered."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import cast

import msgspec
import pytest

from models.handset import load_handset
from models.manifest import load_manifest
from stream.brands.agent import TICK_KEY
from stream.schema import BrandMention, RejectReason
from stream.settings import Settings
from stream.tools.kafka_local import LocalKafka
from stream.tools.sample_posts import LabelledRecord, labelled_stream, load_held_out_texts, load_tweet_texts, make_post
from tests.integration.brand_streams import UNSPACED_POSTS, read_records, unspaced_brands_file
from tests.integration.harness import Topics, WorkerProcess, produce, read_outputs, wait_for_commits

# Posts in languages no model here declares (no corpus, no hand-set posts), each tagged: dead-lettered.
UNSERVED_POSTS = {
    "nl-1": ("nl", "De klantenservice was super vriendelijk, binnen vijf minuten geholpen!"),
    "nl-2": ("nl", "Al drie weken wachten op mijn bestelling, nooit meer bij deze winkel."),
    "sv-1": ("sv", "Leveransen kom en dag tidigt, riktigt nöjd med köpet!"),
    "pl-1": ("pl", "Aplikacja znowu się zawiesza po aktualizacji, masakra."),
}
CREATED_AT_MS = 1_795_860_100_000


def post_record(
    rng: random.Random, post_id: str, text: str, lang: str | None, expected: RejectReason | None = None
) -> LabelledRecord:
    return LabelledRecord(msgspec.json.encode(make_post(rng, post_id, text, CREATED_AT_MS, lang)), post_id, expected)


def multilingual_stream(seed: int, declared: set[str]) -> tuple[list[LabelledRecord], dict[str, str]]:
    """(records, post id -> language) : English tweets with every malformed kind, held-out zh (the first ten
    without a `lang` hint) and es posts, the plain hand-set posts (dead-lettered where their language is not
    `declared`), posts in languages nothing declares, and the unspaced brand posts."""
    rng = random.Random(seed)
    records = labelled_stream(load_tweet_texts(), 150, malformed_share=0.1, seed=seed)
    languages = {r.post_id: "en" for r in records if r.expected is None}
    for lang in ("zh", "es"):
        for n, text in enumerate(load_held_out_texts(lang)[:25]):
            records.append(post_record(rng, f"{lang}-{n}", text, None if lang == "zh" and n < 10 else lang))
            languages[f"{lang}-{n}"] = lang
    for hand in load_handset():
        if hand.kind == "plain":
            expected = None if hand.lang in declared else RejectReason.UNSUPPORTED_LANGUAGE
            records.append(post_record(rng, hand.id, hand.text, hand.lang, expected))
            languages[hand.id] = hand.lang
    for post_id, (lang, text) in UNSERVED_POSTS.items():
        records.append(post_record(rng, post_id, text, lang, RejectReason.UNSUPPORTED_LANGUAGE))
    for post_id, (lang, text, _) in UNSPACED_POSTS.items():
        post = make_post(rng, post_id, text, CREATED_AT_MS, lang)
        post.pop("brand", None)  # no hint: the brand must be found inside the unspaced text
        records.append(LabelledRecord(msgspec.json.encode(post), post_id, None))
        languages[post_id] = lang
    rng.shuffle(records)
    return records, languages


@pytest.mark.multilingual_model
def test_posts_in_every_declared_language_go_to_the_model_that_serves_them(
    kafka: LocalKafka, tmp_path: Path, multilingual_model: Path
) -> None:
    multilingual = load_manifest(multilingual_model)
    default = load_manifest(Settings().model_dir)
    declared = {"en", *multilingual.languages}
    assert not declared & {lang for lang, _ in UNSERVED_POSTS.values()}
    records, languages = multilingual_stream(seed=14, declared=declared)
    valid = {r.post_id for r in records if r.expected is None}
    bad = Counter(r.expected.value for r in records if r.expected is not None)
    served = {languages[post_id] for post_id in valid}
    # The manifest declares the hand-set languages its build validated (models/multilingual.py).
    assert served == declared and len(served) >= 5, served
    assert bad[RejectReason.UNSUPPORTED_LANGUAGE.value] >= len(UNSERVED_POSTS)

    topics = Topics()
    env = {
        "SOCIALPULSE_BRANDS_FILE": str(unspaced_brands_file(tmp_path)),
        "SOCIALPULSE_MULTILINGUAL_MODEL_DIR": str(multilingual_model),
    }
    worker = WorkerProcess(kafka.bootstrap, topics, tmp_path, "worker", **env).start()
    try:
        # Two models to load and warm on shared cores: a generous wait.
        worker.wait_ready(timeout=300)
        asyncio.run(produce(kafka.bootstrap, topics.posts, records))
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(valid), bad.total(), timeout=420))
        fields = topics.fields()
        ends, committed = asyncio.run(wait_for_commits(kafka.bootstrap, fields["app_id"], topics.posts, timeout=60))
        mentions_end, _ = asyncio.run(
            wait_for_commits(kafka.bootstrap, fields["app_id"], fields["mentions_topic"], timeout=60)
        )
        mentions = asyncio.run(read_records(kafka.bootstrap, fields["mentions_topic"], sum(mentions_end.values()), 60))
    finally:
        assert worker.stop() == 0, worker.log_tail()

    # Every record accounted for: each valid post once on each event topic, each bad one dead-lettered with
    # its reason (no served language among them), and the input committed to its end.
    assert outputs.sentiment_posts() == Counter(valid) and outputs.behaviour_posts() == Counter(valid)
    assert Counter(reason for reason, _, _ in outputs.dead_letters) == bad, outputs.dead_letters
    assert all(committed.get(p, 0) >= end for p, end in ends.items()), (ends, committed, worker.log_tail())
    # English on the default model, the rest on the multilingual one; the event says which.
    by_post = {str(event["post_id"]): cast(dict[str, str], event["model"]) for event in outputs.sentiment}
    expected_model = {post_id: default if languages[post_id] == "en" else multilingual for post_id in valid}
    assert {p: (m["name"], m["version"]) for p, m in by_post.items()} == {
        p: (m.name, m.version) for p, m in expected_model.items()
    }
    assert f"serving {sorted(declared)}" in worker.log_path.read_text(errors="replace")
    # The Chinese and Japanese posts name their brands inside unspaced text.
    decoded = [msgspec.json.decode(m.value or b"", type=BrandMention) for m in mentions if m.key != TICK_KEY]
    unspaced = {(m.post_id, m.brand, m.language) for m in decoded if m.post_id in UNSPACED_POSTS}
    assert unspaced == {(post_id, brand, lang) for post_id, (lang, _, brand) in UNSPACED_POSTS.items()}
