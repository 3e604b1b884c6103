"""Failures that must stop the worker loudly (issue 13): a stage task that dies (the worker waited forever with
worker_up at 1), and a model that no longer runs anything (every post was dead-lettered as
`inference_failed`, the whole stream diverted), while posts the model alone cannot run are still
dead-lettered one by one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from aiokafka import AIOKafkaProducer
from tokenizers import Tokenizer, models, pre_tokenizers

from models.manifest import Head, Manifest, Source, Variant
from stream.backends.base import Outputs
from stream.backends.null import NullBackend
from stream.batch import Batcher, Job
from stream.emit import Emitter, Topics
from stream.metrics import Metrics
from stream.pipeline import Pipeline, PipelineFailed, Ticket
from stream.schema import ModelRef, RejectReason
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
        max_inflight_tokens=10_000,
    )


async def test_a_dead_batch_preparer_fails_the_pipeline(tokenizer_file: Path) -> None:
    batcher = small_batcher(tokenizer_file, 8)
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started: nothing reaches emit
    pipeline = Pipeline(
        validator=Validator(lambda _: ("en", 1.0), lambda tag: tag, frozenset(), 0.8, 10_000, 1_000, 100),
        batcher=batcher,
        backend=NullBackend({"sentiment_logits": 3}, "int8", 8),
        manifest=MANIFEST,
        emitter=Emitter(producer, Topics("s", "b", "d", "m"), ModelRef("m", "1", "int8")),
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

    async def emit(self, posts: list[Any]) -> dict[str, list[str]]:
        self.delivered += [post.valid.post.id for post in posts]
        return {}

    async def dead_letter(self, raw: bytes | None, reason: RejectReason, detail: str, source: SourceRef) -> None:
        self.dead.append((reason, source.offset))


def post(n: int, text: str) -> bytes:
    author = {"id": f"u{n}", "followers": 1}
    fields = {"id": f"p{n}", "text": text, "created_at": 1767225600000 + n, "author": author, "platform": "x"}
    return msgspec.json.encode(fields)


async def run_posts(
    tokenizer_file: Path, backend: NullBackend, texts: list[str]
) -> tuple[Pipeline, RecordingEmitter, list[int]]:
    batcher = small_batcher(tokenizer_file, 4)
    emitter = RecordingEmitter()
    pipeline = Pipeline(
        validator=Validator(lambda _: ("en", 1.0), lambda tag: tag, frozenset(), 0.8, 10_000, 1_000, 100),
        batcher=batcher,
        backend=backend,
        manifest=MANIFEST,
        emitter=emitter,  # type: ignore[arg-type]
        metrics=Metrics(),
        probe_attempts=2,
    )
    acked: list[int] = []
    runner = asyncio.create_task(pipeline.run())
    try:
        for n, text in enumerate(texts):

            async def ack(n: int = n) -> None:
                acked.append(n)

            await pipeline.submit(post(n, text), SourceRef("posts", 0, n), ack)
        deadline = asyncio.get_running_loop().time() + 10
        while len(acked) < len(texts) and not pipeline.failure.done():
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
        batcher=small_batcher(tokenizer_file, 4),
        backend=NullBackend({"sentiment_logits": 3}, "int8", 8),
        manifest=MANIFEST,
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
