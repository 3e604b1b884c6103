"""The null backend stands in for a model behind the same protocol, at no cost."""

from __future__ import annotations

import numpy as np

from models.manifest import Head, Manifest, Source, Variant
from stream.backends.null import NullBackend
from stream.infer import decode_outputs

WIDTHS = {"sentiment_logits": 3, "behaviour_logits": 6, "embedding": 384}


def test_outputs_have_the_graph_shapes_for_any_batch() -> None:
    backend = NullBackend(WIDTHS, "int8", max_batch_size=4)
    assert backend.output_names == list(WIDTHS)
    for batch in (1, 4, 9):
        ids = np.ones((batch, 16), dtype=np.int64)
        outputs = backend.run(ids, np.ones_like(ids))
        assert {name: value.shape for name, value in outputs.items()} == {
            name: (batch, width) for name, width in WIDTHS.items()
        }
        assert all(value.dtype == np.float32 for value in outputs.values())
    # Rows differ, so decoded labels vary across a batch as with a model.
    first = backend.run(np.ones((4, 8), dtype=np.int64), np.ones((4, 8), dtype=np.int64))
    assert len({tuple(row) for row in first["sentiment_logits"]}) == 4


def test_decodes_like_a_model() -> None:
    manifest = Manifest(
        name="m",
        version="1",
        max_seq_len=128,
        tokenizer="tokenizer.json",
        heads=[
            Head(name="sentiment", output="sentiment_logits", activation="softmax", labels=["n", "u", "p"]),
            Head(name="behaviour", output="behaviour_logits", activation="sigmoid", labels=list("abcdef")),
        ],
        variants={"int8": Variant("model.int8.onnx", "0" * 64, "cpu", None)},
        source=Source(kind="exported", location="test"),
        embedding_output="embedding",
    )
    backend = NullBackend(WIDTHS, "int8", max_batch_size=8)
    ids = np.ones((3, 8), dtype=np.int64)
    predictions = decode_outputs(manifest, backend.run(ids, np.ones_like(ids)), ["a", "b", "c"])
    assert len(predictions) == 3
    for prediction in predictions:
        assert abs(sum(prediction.heads["sentiment"].scores.values()) - 1.0) < 1e-5
        assert prediction.embedding is not None and prediction.embedding.shape == (384,)
