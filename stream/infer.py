"""Inference stage: run a padded batch on the backend and turn head outputs into labelled scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.manifest import Head, LexiconFusion, Manifest
from stream.backends.base import InferenceBackend, Outputs
from stream.lexicon import lexicon_features

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class HeadResult:
    """One head's decision for one post."""

    scores: dict[str, float]
    # softmax: the single arg-max label; sigmoid: every label at or over its threshold.
    labels: list[str]


@dataclass(frozen=True, slots=True)
class Prediction:
    heads: dict[str, HeadResult]
    embedding: FloatArray | None


def softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: FloatArray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return probabilities


def sigmoid(logits: FloatArray) -> FloatArray:
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def head_logits(head: Head, logits: FloatArray, texts: Sequence[str]) -> FloatArray:
    """The head's final logits: the graph's, or with a fusion, re-weighted with the texts' lexicon scores."""
    return logits if head.fusion is None else fused_logits(head.fusion, logits, texts)


def fused_logits(fusion: LexiconFusion, logits: FloatArray, texts: Sequence[str]) -> FloatArray:
    features = np.hstack([logits, lexicon_features(fusion.features, texts)])
    fused: FloatArray = (
        features @ np.asarray(fusion.weight, dtype=np.float32).T + np.asarray(fusion.bias, dtype=np.float32)
    ).astype(np.float32)
    return fused


def decode_head(head: Head, logits: FloatArray, texts: Sequence[str]) -> list[HeadResult]:
    labels = head.labels
    if head.activation == "softmax":
        probabilities = softmax(head_logits(head, logits, texts))
        top = probabilities.argmax(axis=-1).tolist()
        return [
            HeadResult(scores=dict(zip(labels, row, strict=True)), labels=[labels[index]])
            for row, index in zip(_rounded(probabilities), top, strict=True)
        ]
    probabilities = sigmoid(logits)
    thresholds = np.array([head.thresholds.get(label, 0.5) for label in labels], dtype=np.float32)
    hits = (probabilities >= thresholds).tolist()
    return [
        HeadResult(
            scores=dict(zip(labels, row, strict=True)),
            labels=[label for label, hit in zip(labels, row_hits, strict=True) if hit],
        )
        for row, row_hits in zip(_rounded(probabilities), hits, strict=True)
    ]


def decode_outputs(manifest: Manifest, outputs: Outputs, texts: Sequence[str]) -> list[Prediction]:
    """Per-text predictions from the graph's outputs for texts (the same texts, in the same order)."""
    per_head = {head.name: decode_head(head, outputs[head.output], texts) for head in manifest.heads}
    batch = len(next(iter(per_head.values())))
    embeddings = outputs.get(manifest.embedding_output) if manifest.embedding_output else None
    return [
        Prediction(
            heads={name: results[i] for name, results in per_head.items()},
            embedding=embeddings[i] if embeddings is not None else None,
        )
        for i in range(batch)
    ]


def predict(
    backend: InferenceBackend,
    manifest: Manifest,
    input_ids: npt.NDArray[np.int64],
    attention_mask: npt.NDArray[np.int64],
    texts: Sequence[str],
) -> list[Prediction]:
    return decode_outputs(manifest, backend.run(input_ids, attention_mask), texts)


def _rounded(probabilities: FloatArray) -> list[list[float]]:
    # Six decimals keep events small and stable across runs without losing anything a threshold sees;
    # rounded in float64 once per batch, as round(float(x), 6) per value did.
    rounded: list[list[float]] = np.round(probabilities.astype(np.float64), 6).tolist()
    return rounded
