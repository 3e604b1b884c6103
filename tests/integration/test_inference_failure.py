"""A post the model cannot run is dead-lettered as `inference_failed`; its batch-mates still come out.

The model is a real ONNX graph whose embedding table is smaller than its tokenizer's vocabulary, the
failure a mismatched tokenizer/model pair causes in production: ONNX Runtime's Gather rejects any token
id past the table, so exactly the posts holding a rarer word fail, and which ones is known before the run.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.behaviour import BEHAVIOUR_LABELS
from models.data import SENTIMENT_LABELS
from models.manifest import Head, Manifest, Source, Variant, sha256_of, write_manifest
from stream.schema import RejectReason
from stream.settings import Settings
from stream.tokenize import PostTokenizer
from stream.tools.sample_posts import LabelledRecord, load_tweet_texts, make_post
from tests.integration.harness import Topics, WorkerProcess, produce, read_outputs

TABLE_ROWS = 20_000
HIDDEN = 8
GOOD_POSTS = 270
BAD_POSTS = 30


def write_truncated_vocab_model(model_dir: Path, tokenizer_file: Path) -> PostTokenizer:
    """input_ids -> Gather(table[TABLE_ROWS]) -> masked sum -> two linear heads, as a manifest-described model."""
    rng = np.random.default_rng(5)
    initializers = [
        numpy_helper.from_array(rng.normal(size=(TABLE_ROWS, HIDDEN)).astype(np.float32), "table"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "feature_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "token_axis"),
        numpy_helper.from_array(rng.normal(size=(HIDDEN, len(SENTIMENT_LABELS))).astype(np.float32), "w_sentiment"),
        numpy_helper.from_array(rng.normal(size=(HIDDEN, len(BEHAVIOUR_LABELS))).astype(np.float32), "w_behaviour"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["vectors"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "feature_axis"], ["mask3"]),
        helper.make_node("Mul", ["vectors", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "token_axis"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w_sentiment"], ["sentiment_logits"]),
        helper.make_node("MatMul", ["pooled", "w_behaviour"], ["behaviour_logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "truncated_vocab",
        [
            helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
            for name in ("input_ids", "attention_mask")
        ],
        [
            helper.make_tensor_value_info("sentiment_logits", TensorProto.FLOAT, ["batch", len(SENTIMENT_LABELS)]),
            helper.make_tensor_value_info("behaviour_logits", TensorProto.FLOAT, ["batch", len(BEHAVIOUR_LABELS)]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    model_dir.mkdir(parents=True)
    onnx.save(model, model_dir / "model.fp32.onnx")
    shutil.copyfile(tokenizer_file, model_dir / "tokenizer.json")
    manifest = Manifest(
        name="truncated-vocab",
        version="test",
        max_seq_len=128,
        tokenizer="tokenizer.json",
        tokenizer_sha256=sha256_of(model_dir / "tokenizer.json"),
        heads=[
            Head(name="sentiment", output="sentiment_logits", activation="softmax", labels=list(SENTIMENT_LABELS)),
            Head(name="behaviour", output="behaviour_logits", activation="sigmoid", labels=list(BEHAVIOUR_LABELS)),
        ],
        variants={
            "fp32": Variant(file="model.fp32.onnx", sha256=sha256_of(model_dir / "model.fp32.onnx"), target="cpu")
        },
        source=Source(kind="exported", location="built by this test"),
    )
    write_manifest(model_dir, manifest)
    return PostTokenizer.for_model(model_dir, manifest)


def test_unrunnable_posts_are_dead_lettered_and_their_batch_mates_delivered(kafka: Any, tmp_path: Path) -> None:
    tokenizer = write_truncated_vocab_model(tmp_path / "model", Settings().model_dir / "tokenizer.json")
    texts = sorted(set(load_tweet_texts()))
    runnable = [max(ids) < TABLE_ROWS for ids, _ in tokenizer.encode(texts)]
    good = [text for text, ok in zip(texts, runnable, strict=True) if ok]
    bad = [text for text, ok in zip(texts, runnable, strict=True) if not ok]
    rng = random.Random(3)
    chosen = [(text, None) for text in rng.sample(good, GOOD_POSTS)]
    chosen += [(text, RejectReason.INFERENCE_FAILED) for text in rng.sample(bad, BAD_POSTS)]
    rng.shuffle(chosen)
    records = []
    for index, (text, expected) in enumerate(chosen):
        post = make_post(rng, f"p{index}", text, 1_795_860_000_000 + index)
        records.append(LabelledRecord(raw=msgspec.json.encode(post), post_id=f"p{index}", expected=expected))

    topics = Topics()
    worker = WorkerProcess(kafka.bootstrap, topics, tmp_path, "worker", SOCIALPULSE_MODEL_DIR=str(tmp_path / "model"))
    worker.start()
    try:
        worker.wait_ready()
        asyncio.run(produce(kafka.bootstrap, topics.posts, records))
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, GOOD_POSTS, BAD_POSTS, timeout=300))
    finally:
        assert worker.stop() == 0, worker.log_tail()

    delivered = {r.post_id for r in records if r.expected is None}
    assert set(outputs.sentiment_posts()) == delivered
    assert set(outputs.behaviour_posts()) == delivered
    failed = {r.post_id for r in records if r.expected is not None}
    assert sorted(reason for reason, _, _ in outputs.dead_letters) == ["inference_failed"] * BAD_POSTS
    assert {str(msgspec.json.decode(raw)["id"]) for _, raw, _ in outputs.dead_letters} == failed, "original bytes"
    assert "failed in inference" in worker.log_tail(400)
