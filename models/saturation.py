"""The int8 MatMul arithmetic of x86 CPUs without VNNI, in numpy, to check a quantised model against it.

ONNX Runtime's dynamic int8 graph multiplies uint8 activations (0..255, zero point on the side) by int8
weights in MatMulInteger. MLAS runs that product three ways on x86-64 (onnxruntime/core/mlas/lib,
QgemmU8X8KernelAvx2 and SymQgemmU8KernelAvx512):
- AVX-VNNI / AVX512-VNNI / AMX: VPDPBUSD widens every uint8 x int8 product to 32 bits. Exact.
- AVX2 and AVX-512 without VNNI: VPMADDUBSW adds each adjacent pair of products along K (k = 2i, 2i+1)
  into a *saturating* int16, then VPMADDWD widens. A pair past +-32767 is clipped, silently.
- U8U8 (uint8 weights): no instruction multiplies uint8 by uint8, so MLAS widens to 16 bits first. Exact.

A pair can saturate only if 255 * (|w[2i, n]| + |w[2i+1, n]|) > 32767, which needs weights past 64 in
magnitude. So a weight matrix whose every pair stays within 128 (e.g. 7-bit weights, [-64, 64]) is
saturation-free by construction on every CPU; `pair_peak` checks that statically, and `run_int8` runs a
graph with either arithmetic so the effect of saturation on a model's labels can be measured on any CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

INT16_MAX = 32767
UINT8_MAX = 255

IntArray = npt.NDArray[np.int64]
# Rows of activations whose candidate pairs are expanded at once (memory: rows x candidate cells).
ROWS_PER_CHUNK = 256


def pair_peak(weight: npt.NDArray[np.int8]) -> int:
    """The largest |pair sum| any uint8 activation row can make with this [K, N] int8 weight."""
    magnitude = np.abs(weight.astype(np.int32))
    if magnitude.shape[0] % 2:
        magnitude = np.vstack([magnitude, np.zeros((1, magnitude.shape[1]), dtype=np.int32)])
    return int(UINT8_MAX * (magnitude[0::2] + magnitude[1::2]).max())


def int8_weights(model: onnx.ModelProto) -> dict[str, npt.NDArray[np.int8]]:
    """The constant int8 B operand of every MatMulInteger, by node name."""
    initializers = {init.name: init for init in model.graph.initializer}
    weights: dict[str, npt.NDArray[np.int8]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in initializers:
            array = numpy_helper.to_array(initializers[node.input[1]])
            if array.dtype == np.int8:
                weights[node.name] = array
    return weights


def max_pair_peak(model_path: Path) -> int:
    """The largest pair sum any MatMulInteger of the graph can reach; <= INT16_MAX means saturation-free."""
    return max((pair_peak(weight) for weight in int8_weights(onnx.load(str(model_path))).values()), default=0)


def saturating_pairs_matmul(a: npt.NDArray[np.uint8], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    """A @ B on raw uint8 x int8 values the way VPMADDUBSW + VPMADDWD compute it (pairs clipped to int16)."""
    a2 = a.reshape(-1, a.shape[-1]).astype(np.float32)
    b32 = b.astype(np.float32)
    # Exact in float32: |sum| <= 255 * 127 * K stays under 2**24 for K <= 518 (the graph's K is 384).
    exact = a2 @ b32
    if a2.shape[1] % 2:
        a2 = np.hstack([a2, np.zeros((a2.shape[0], 1), dtype=np.float32)])
        b32 = np.vstack([b32, np.zeros((1, b32.shape[1]), dtype=np.float32)])
    magnitude = np.abs(b32)
    # Only (pair, column) cells whose weights could push a pair past int16 need looking at.
    pairs, columns = np.nonzero(UINT8_MAX * (magnitude[0::2] + magnitude[1::2]) > INT16_MAX)
    if pairs.size:
        order = np.argsort(columns, kind="stable")
        pairs, columns = pairs[order], columns[order]
        starts = np.flatnonzero(np.r_[True, columns[1:] != columns[:-1]])
        first_weight, second_weight = b32[2 * pairs, columns], b32[2 * pairs + 1, columns]
        for row in range(0, a2.shape[0], ROWS_PER_CHUNK):
            chunk = a2[row : row + ROWS_PER_CHUNK]
            pair_sums = chunk[:, 2 * pairs] * first_weight + chunk[:, 2 * pairs + 1] * second_weight
            excess = pair_sums - np.clip(pair_sums, -INT16_MAX - 1, INT16_MAX)
            exact[row : row + ROWS_PER_CHUNK, columns[starts]] -= np.add.reduceat(excess, starts, axis=1)
    return exact.astype(np.int32).reshape(*a.shape[:-1], b.shape[1])


def run_int8(model_path: Path, feeds: Mapping[str, IntArray], saturate: bool) -> dict[str, npt.NDArray[np.float32]]:
    """Run an int8 graph in onnx's reference evaluator, its MatMulInteger exact or as VPMADDUBSW computes it."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class MatMulInteger(OpRun):  # type: ignore[misc]
        op_domain = ""

        def _run(self, a: Any, b: Any, a_zero_point: Any = None, b_zero_point: Any = None) -> tuple[Any]:
            if b.dtype != np.int8 or a.dtype != np.uint8 or (b_zero_point is not None and np.any(b_zero_point)):
                raise NotImplementedError("only uint8 x symmetric int8 MatMulInteger is emulated")
            raw = saturating_pairs_matmul(a, b) if saturate else _exact_matmul(a, b)
            if a_zero_point is not None:
                # MLAS takes the zero point out with the weight column sums, after the pair products.
                raw = raw - np.int32(a_zero_point) * b.astype(np.int32).sum(axis=0)
            return (raw.astype(np.int32),)

    model = onnx.load(str(model_path))
    evaluator = ReferenceEvaluator(model, new_ops=[MatMulInteger])
    names = [output.name for output in model.graph.output]
    values = evaluator.run(names, dict(feeds))
    return {name: np.asarray(value, dtype=np.float32) for name, value in zip(names, values, strict=True)}


def _exact_matmul(a: npt.NDArray[np.uint8], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    result = a.reshape(-1, a.shape[-1]).astype(np.float32) @ b.astype(np.float32)
    return result.astype(np.int32).reshape(*a.shape[:-1], b.shape[1])
