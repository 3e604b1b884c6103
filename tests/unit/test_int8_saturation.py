"""int8 MatMuls must give the same result on every x86-64 CPU, VNNI or not (models/saturation.py).

The shipped int8 graph is checked by construction (no weight pair can push VPMADDUBSW's int16 past its
range, whatever the uint8 activations), and on real activations through the emulated non-VNNI
arithmetic; neither depends on the CPU the test runs on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models.manifest import load_manifest
from models.runtime import OnnxClassifier, encode
from models.saturation import INT16_MAX, int8_weights, pair_peak, run_int8, saturating_pairs_matmul
from stream.backends.cpu import cpu_features


def vpmaddubsw_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairs of products along K, each clipped to int16, then summed: what the instruction pair computes."""
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    if a64.shape[1] % 2:
        a64 = np.hstack([a64, np.zeros((a64.shape[0], 1), dtype=np.int64)])
        b64 = np.vstack([b64, np.zeros((1, b64.shape[1]), dtype=np.int64)])
    pairs = a64[:, 0::2, None] * b64[None, 0::2, :] + a64[:, 1::2, None] * b64[None, 1::2, :]
    return np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(axis=1)


@pytest.mark.parametrize("k", [6, 7, 384])
def test_emulated_kernel_equals_the_instruction_reference(k: int) -> None:
    rng = np.random.default_rng(k)
    a = rng.integers(0, 256, (40, k), dtype=np.uint8)
    b = rng.integers(-127, 128, (k, 9)).astype(np.int8)
    exact = a.astype(np.int64) @ b.astype(np.int64)
    emulated = saturating_pairs_matmul(a, b)
    assert np.array_equal(emulated, vpmaddubsw_reference(a, b))
    # Full-range random weights do saturate: the reference is not the exact product.
    assert not np.array_equal(emulated, exact)


def test_pair_peak_bounds_seven_bit_weights() -> None:
    seven_bit = np.full((4, 3), 64, dtype=np.int8)
    assert pair_peak(seven_bit) == 255 * 128 <= INT16_MAX
    assert pair_peak(-seven_bit) == 255 * 128
    full = seven_bit.copy()
    full[2, 1], full[3, 1] = 127, 100
    assert pair_peak(full) == 255 * 227 > INT16_MAX
    # Only adjacent rows (2i, 2i+1) pair up: 127 next to a 0 stays in range.
    lone = np.zeros((4, 1), dtype=np.int8)
    lone[1, 0], lone[2, 0] = 127, 127
    assert pair_peak(lone) == 255 * 127 <= INT16_MAX


def test_cpu_features_names_the_int8_path() -> None:
    features = cpu_features()
    assert set(features) >= {"model", "vendor", "avx2", "avx512_vnni", "amx_int8", "int8_dot_product"}
    assert features["int8_dot_product"] in {"vnni", "vpmaddubsw"}


@pytest.mark.default_model
def test_shipped_int8_cannot_saturate(default_model: Path) -> None:
    manifest = load_manifest(default_model)
    graph = onnx.load(str(default_model / manifest.variants["int8"].file))
    weights = int8_weights(graph)
    assert len(weights) >= 24, "expected the encoder's attention and FFN-up MatMuls in int8"
    peaks = {name: pair_peak(weight) for name, weight in weights.items()}
    assert max(peaks.values()) <= INT16_MAX, {name: peak for name, peak in peaks.items() if peak > INT16_MAX}
    # The bound assumes uint8 activations: every MatMulInteger's A comes from DynamicQuantizeLinear.
    producers = {output: node.op_type for node in graph.graph.node for output in node.output}
    integer_matmuls = [node for node in graph.graph.node if node.op_type == "MatMulInteger"]
    assert {producers.get(node.input[0]) for node in integer_matmuls} == {"DynamicQuantizeLinear"}


@pytest.mark.default_model
def test_shipped_int8_gives_the_same_logits_with_non_vnni_arithmetic(default_model: Path) -> None:
    from models.evaluate import held_out_tweets

    manifest = load_manifest(default_model)
    path = default_model / manifest.variants["int8"].file
    classifier = OnnxClassifier.from_dir(default_model, "int8", backend="cpu")
    texts = sorted((tweet.text for tweet in held_out_tweets()[:24]), key=len)
    input_ids, attention_mask = encode(classifier.tokenizer, texts)
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    exact = run_int8(path, feeds, saturate=False)
    emulated = run_int8(path, feeds, saturate=True)
    for name, values in exact.items():
        assert np.array_equal(values, emulated[name]), name
    # The emulator runs the same graph as ONNX Runtime on this CPU (its op fusions round a little apart).
    served = classifier.backend.run(input_ids, attention_mask)
    assert np.array_equal(served["sentiment_logits"].argmax(-1), exact["sentiment_logits"].argmax(-1))
