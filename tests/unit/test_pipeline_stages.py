"""A stage task that dies must stop the worker loudly, not leave it waiting with worker_up at 1 (issue 13)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from tokenizers import Tokenizer, models, pre_tokenizers

from models.manifest import Head, Manifest, Source, Variant
from stream.backends.null import NullBackend
from stream.batch import Batcher, Job
from stream.emit import Emitter, Topics
from stream.metrics import Metrics
from stream.pipeline import Pipeline, PipelineFailed, Ticket
from stream.schema import ModelRef
from stream.tokenize import PostTokenizer
from stream.validate import Validator

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


async def test_a_dead_batch_preparer_fails_the_pipeline(tokenizer_file: Path) -> None:
    batcher: Batcher[Ticket] = Batcher(
        PostTokenizer(tokenizer_file, 64, 0),
        max_batch_tokens=256,
        max_batch_size=8,
        max_wait_ms=5,
        sort_window=64,
        pad_multiple=8,
        max_inflight_tokens=10_000,
    )
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
