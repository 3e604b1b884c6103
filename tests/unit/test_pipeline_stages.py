"""Failures that must stop the worker loudly (issue 13): a stage task that dies (the worker waited forever with
worker_up at 1), and a model that no longer runs anything (every post was dead-lettered as
`inference_failed`, the whole stream diverted), while posts the model alone cannot run are still
dead-lettered one by one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from aiokafka import AIOKafkaProducer
from tokenizers import Tokenizer, models, pre_tokenizers

from models.manifest import Head, Manifest, Source, Variant, write_manifest
from stream.backends.base import Outputs
from stream.backends.null import NullBackend
from stream.batch import Batcher, Job, TokenBudget
from stream.emit import Emitter, Topics
from stream.metrics import Metrics
from stream.pipeline import Lane, Pipeline, PipelineFailed, Ticket
from stream.schema import RejectReason
from stream.serving import ServingError, plan_serving
from stream.settings import Settings
from stream.tokenize import PostTokenizer
from stream.validate import SourceRef, Validator

MANIFEST = Manifest(
    name="m",
    version="1",
    max_seq_len=64,
    tokenizer="tokenizer.json",
    heads=[Head(name="sentiment", output="sentiment_logits", activation="softmax", labels=["n", "u", "p"])],
    variants={"int8": Variant("model.int8.onnx", "0" * 64, "cpu", None)},
    source=Source(kind="exported", location="test"),
)


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    tokenizer = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "hello": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def small_batcher(tokenizer_file: Path, batch_size: int) -> Batcher[Ticket]:
    return Batcher(
        PostTokenizer(tokenizer_file, 64, 0),
        max_batch_tokens=256,
        max_batch_size=batch_size,
        max_wait_ms=5,
        sort_window=batch_size,
        pad_multiple=8,
        budget=TokenBudget(10_000),
    )


async def test_a_dead_batch_preparer_fails_the_pipeline(tokenizer_file: Path) -> None:
    batcher = small_batcher(tokenizer_file, 8)
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started: nothing reaches emit
    pipeline = Pipeline(
        validator=Validator(lambda _: ("en", 1.0), lambda tag: tag, frozenset(), 0.8, 10_000, 1_000, 100),
        lanes=[Lane(batcher, NullBackend({"sentiment_logits": 3}, "int8", 8), MANIFEST)],
        emitter=Emitter(producer, Topics("s", "b", "d", "m")),
        metrics=Metrics(),
    )
    runner = asyncio.create_task(pipeline.run())
    # The tokenizer raises on a text that is not a str: the preparer task dies with it.
    await batcher.put(Job(text=b"not text", ticket=None, tokens=3))  # type: ignore[arg-type]
    try:
        with pytest.raises(PipelineFailed, match="batch preparer"):
            await asyncio.wait_for(asyncio.shield(pipeline.failure), timeout=5)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        pipeline.close()
        await producer.stop()


HELLO_ID = 2  # the one word the test tokenizer knows


class FailingBackend(NullBackend):
    """Fails every run (a lost GPU), or with `only_on_hello` only runs holding the token "hello" (a poison post)."""

    def __init__(self, *, only_on_hello: bool) -> None:
        super().__init__({"sentiment_logits": 3}, "int8", 8)
        self.only_on_hello = only_on_hello

    def run(self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]) -> Outputs:
        if not self.only_on_hello or (input_ids == HELLO_ID).any():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().run(input_ids, attention_mask)


class RecordingEmitter:
    """Stands in for the Kafka emit stage: keeps what would be produced."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.dead: list[tuple[RejectReason, int]] = []
        # Post id -> name of the model whose events it got.
        self.classified_by: dict[str, str] = {}

    async def emit(self, posts: list[Any]) -> dict[str, list[str]]:
        self.delivered += [post.valid.post.id for post in posts]
        self.classified_by.update((post.valid.post.id, post.model.name) for post in posts)
        return {}

    async def dead_letter(self, raw: bytes | None, reason: RejectReason, detail: str, source: SourceRef) -> None:
        self.dead.append((reason, source.offset))


def post(n: int, text: str, lang: str | None = None) -> bytes:
    author = {"id": f"u{n}", "followers": 1}
    fields = {"id": f"p{n}", "text": text, "created_at": 1767225600000 + n, "author": author, "platform": "x"}
    return msgspec.json.encode(fields if lang is None else {**fields, "lang": lang})


async def run_posts(
    tokenizer_file: Path, backend: NullBackend, texts: list[str]
) -> tuple[Pipeline, RecordingEmitter, list[int]]:
    lane = Lane(small_batcher(tokenizer_file, 4), backend, MANIFEST)
    return await run_records([lane], [post(n, text) for n, text in enumerate(texts)])


async def run_records(lanes: list[Lane], records: list[bytes]) -> tuple[Pipeline, RecordingEmitter, list[int]]:
    """Records through a pipeline of these lanes (every language served; a post's `lang` is its language) until
    each is acked or the pipeline fails."""
    emitter = RecordingEmitter()
    pipeline = Pipeline(
        validator=Validator(lambda _: ("en", 1.0), lambda tag: tag, frozenset(), 0.8, 10_000, 1_000, 100),
        lanes=lanes,
        emitter=emitter,  # type: ignore[arg-type]
        metrics=Metrics(),
        probe_attempts=2,
    )
    acked: list[int] = []
    runner = asyncio.create_task(pipeline.run())
    try:
        for n, record in enumerate(records):

            async def ack(n: int = n) -> None:
                acked.append(n)

            await pipeline.submit(record, SourceRef("posts", 0, n), ack)
        deadline = asyncio.get_running_loop().time() + 10
        while len(acked) < len(records) and not pipeline.failure.done():
            assert asyncio.get_running_loop().time() < deadline, (acked, emitter.dead)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        pipeline.close()
    return pipeline, emitter, acked


async def test_a_model_that_runs_nothing_stops_the_worker_instead_of_filling_the_dlq(tokenizer_file: Path) -> None:
    pipeline, emitter, acked = await run_posts(
        tokenizer_file, FailingBackend(only_on_hello=False), ["a b", "c d e", "f"]
    )
    with pytest.raises(PipelineFailed, match="fails on input it ran before"):
        pipeline.failure.result()
    assert emitter.dead == [] and acked == [], "posts of an outage are neither dead-lettered nor committed"


async def test_posts_the_model_alone_cannot_run_are_dead_lettered(tokenizer_file: Path) -> None:
    texts = ["a b", "hello", "c", "hello there", "d e f", "g"]
    pipeline, emitter, acked = await run_posts(tokenizer_file, FailingBackend(only_on_hello=True), texts)
    assert not pipeline.failure.done()
    assert sorted(emitter.dead) == [(RejectReason.INFERENCE_FAILED, 1), (RejectReason.INFERENCE_FAILED, 3)]
    assert sorted(emitter.delivered) == ["p0", "p2", "p4", "p5"]
    assert sorted(acked) == list(range(len(texts)))


class SlowDeadLetters(RecordingEmitter):
    """A broker that takes dead letters only when `opened` is set; counts how many wait at once."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = asyncio.Event()
        self.waiting = 0
        self.most_waiting = 0

    async def dead_letter(self, raw: bytes | None, reason: RejectReason, detail: str, source: SourceRef) -> None:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        await self.opened.wait()
        self.waiting -= 1
        await super().dead_letter(raw, reason, detail, source)


async def test_a_flood_of_invalid_records_waits_for_the_dead_letters_in_flight(tokenizer_file: Path) -> None:
    emitter = SlowDeadLetters()
    pipeline = Pipeline(
        validator=Validator(lambda _: ("en", 1.0), lambda tag: tag, frozenset(), 0.8, 10_000, 1_000, 100),
        lanes=[Lane(small_batcher(tokenizer_file, 4), NullBackend({"sentiment_logits": 3}, "int8", 8), MANIFEST)],
        emitter=emitter,  # type: ignore[arg-type]
        metrics=Metrics(),
        max_inflight_dead_letters=50,
    )
    acked: list[int] = []

    async def flood() -> None:
        for n in range(500):

            async def ack(n: int = n) -> None:
                acked.append(n)

            await pipeline.submit(b"not json", SourceRef("posts", 0, n), ack)

    flooding = asyncio.create_task(flood())
    await asyncio.sleep(0.3)
    assert not flooding.done(), "the agent kept taking invalid records while the broker took none"
    assert emitter.most_waiting == 50
    emitter.opened.set()
    await asyncio.wait_for(flooding, timeout=10)
    await pipeline.drain(timeout=10)
    assert sorted(acked) == list(range(500)) and emitter.most_waiting == 50
    pipeline.close()


ENGLISH = msgspec.structs.replace(MANIFEST, name="english", languages=["en"])
MULTILINGUAL = msgspec.structs.replace(MANIFEST, name="multilingual", languages=["en", "zh", "es"])


def routed_pair(tokenizer_file: Path, multilingual_backend: NullBackend) -> list[Lane]:
    """The worker's pair: English first, then the multilingual model for the languages it adds."""
    english_backend = NullBackend({"sentiment_logits": 3}, "int8", 8)
    english = Lane(small_batcher(tokenizer_file, 4), english_backend, ENGLISH, frozenset({"en"}))
    return [
        english,
        Lane(small_batcher(tokenizer_file, 4), multilingual_backend, MULTILINGUAL, frozenset({"zh", "es"})),
    ]


async def test_each_post_is_classified_by_the_model_that_serves_its_language(tokenizer_file: Path) -> None:
    langs = ["en", "zh", "es", "en", "ja", "zh", "en", "es"]
    records = [post(n, f"word{n} other", lang) for n, lang in enumerate(langs)]
    pipeline, emitter, acked = await run_records(
        routed_pair(tokenizer_file, NullBackend({"sentiment_logits": 3}, "int8", 8)), records
    )
    assert not pipeline.failure.done()
    # ja is declared by neither model (served here because the validator lets every language through): it
    # takes the last lane, the multilingual one.
    expected = {"en": "english", "zh": "multilingual", "es": "multilingual", "ja": "multilingual"}
    assert emitter.classified_by == {f"p{n}": expected[lang] for n, lang in enumerate(langs)}
    assert sorted(acked) == list(range(len(records))) and emitter.dead == []


async def test_a_model_that_runs_nothing_stops_the_worker_though_the_other_lane_works(tokenizer_file: Path) -> None:
    records = [post(0, "a b", "en"), post(1, "c d", "zh"), post(2, "e", "en"), post(3, "f g", "es")]
    pipeline, emitter, acked = await run_records(
        routed_pair(tokenizer_file, FailingBackend(only_on_hello=False)), records
    )
    with pytest.raises(PipelineFailed, match="inference on multilingual fails on input it ran before"):
        pipeline.failure.result()
    # The English lane's posts went out; the broken lane's were neither dead-lettered nor acked.
    assert sorted(emitter.delivered) == ["p0", "p2"] and emitter.dead == [] and sorted(acked) == [0, 2]


async def test_posts_one_model_cannot_run_are_dead_lettered_while_the_other_lane_delivers(
    tokenizer_file: Path,
) -> None:
    records = [post(0, "hello", "zh"), post(1, "hello", "en"), post(2, "c", "zh"), post(3, "d", "es")]
    pipeline, emitter, acked = await run_records(
        routed_pair(tokenizer_file, FailingBackend(only_on_hello=True)), records
    )
    assert not pipeline.failure.done()
    assert emitter.dead == [(RejectReason.INFERENCE_FAILED, 0)]
    assert emitter.classified_by == {"p1": "english", "p2": "multilingual", "p3": "multilingual"}
    assert sorted(acked) == [0, 1, 2, 3]


# Which models serve which languages (stream/serving.py: plan_serving reads the manifests only).


@pytest.fixture
def model_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """The default model's folder (its manifest, like the MiniLM builds', declares no languages) and a
    multilingual one's."""
    folders = tmp_path / "default", tmp_path / "multilingual"
    for folder, manifest in zip(folders, (MANIFEST, MULTILINGUAL), strict=True):
        folder.mkdir()
        write_manifest(folder, manifest)
    return folders


def lanes_of(settings: Settings) -> list[tuple[str, list[str]]]:
    return [(lane.manifest.name, sorted(lane.languages)) for lane in plan_serving(settings).lanes]


def test_the_served_languages_follow_the_manifests(model_dirs: tuple[Path, Path]) -> None:
    default, multilingual = model_dirs
    settings = Settings(model_dir=default, multilingual_model_dir=multilingual)
    # English stays on the default model; the multilingual one takes the languages it adds.
    assert lanes_of(settings) == [("m", ["en"]), ("multilingual", ["es", "zh"])]
    assert plan_serving(settings).served == {"en", "zh", "es"}
    assert plan_serving(Settings(model_dir=default, multilingual_model_dir=multilingual, languages=[])).served == set()
    with pytest.raises(ServingError, match=r"\['ja'\], which no loaded model declares"):
        plan_serving(Settings(model_dir=default, multilingual_model_dir=multilingual, languages=["en", "zh", "ja"]))


def test_without_a_second_model_only_the_default_models_languages_are_served(
    model_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    default, multilingual = model_dirs
    missing = multilingual.parent / "never-built"
    # The default folder not built yet: a log line says how to build it, and English is served.
    unset = Settings.model_construct(model_dir=default, multilingual_model_dir=missing, _fields_set={"model_dir"})
    assert lanes_of(unset) == [("m", ["en"])] and plan_serving(unset).served == {"en"}
    assert "socialpulse models build --recipe multilingual" in caplog.text
    # Asked for by name, a missing folder is an error, as is a language only the missing model would serve.
    with pytest.raises(ServingError, match=r"holds no manifest\.json"):
        plan_serving(Settings(model_dir=default, multilingual_model_dir=missing))
    monkeypatch.setenv("SOCIALPULSE_MULTILINGUAL_MODEL_DIR", "")
    assert lanes_of(Settings(model_dir=default)) == [("m", ["en"])]
    with pytest.raises(ServingError, match="zh"):
        plan_serving(Settings(model_dir=default, languages=["en", "zh"]))
    # The same model named twice, or a second one that adds no language, is loaded once.
    assert lanes_of(Settings(model_dir=multilingual, multilingual_model_dir=multilingual)) == [
        ("multilingual", ["en", "es", "zh"])
    ]
    assert lanes_of(Settings(model_dir=multilingual, multilingual_model_dir=default)) == [
        ("multilingual", ["en", "es", "zh"])
    ]


@pytest.mark.default_model
@pytest.mark.multilingual_model
def test_the_worker_serving_both_models_imports_neither_torch_nor_transformers(
    default_model: Path, multilingual_model: Path
) -> None:
    # Both lanes' backends loaded and warmed as the worker does, and the demo's held-out posts read.
    code = f"""
import sys
from pathlib import Path
from stream.settings import Settings
from stream.tools.sample_posts import held_out_mix
from stream.serving import plan_serving
from stream.worker import build_backend
settings = Settings(model_dir=Path({str(default_model)!r}), multilingual_model_dir=Path({str(multilingual_model)!r}),
                    max_batch_tokens=256)
plan = plan_serving(settings)
assert len(plan.lanes) == 2, plan.lanes
for lane in plan.lanes:
    build_backend(settings, lane.model_dir, lane.manifest)
assert held_out_mix(0.1)
leaked = sorted({{"torch", "transformers"}} & set(sys.modules))
sys.exit(f"imported {{leaked}}" if leaked else 0)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
