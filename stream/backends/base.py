"""The seam between batching and the execution engine."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import numpy.typing as npt

Outputs = dict[str, npt.NDArray[np.float32]]


class InferenceBackend(Protocol):
    """Runs one padded batch of token ids; must be safe to call from a worker thread."""

    # "cpu", "cuda", "tensorrt", or "null" (the no-cost test double)
    name: str
    # The ONNX Runtime execution provider that actually serves the graph.
    provider: str
    # Which manifest variant is loaded ("int8", "fp16", "fp32").
    variant: str

    @property
    def output_names(self) -> list[str]: ...

    def run(self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]) -> Outputs: ...

    def warmup(self, shapes: Iterable[tuple[int, int]]) -> None:
        """Run each (batch size, padded length) once before traffic."""
        ...
