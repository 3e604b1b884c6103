"""The null backend: a test double behind the InferenceBackend protocol that answers at no cost.

It returns outputs of the graph's names and widths, so everything around inference (consume, validate,
batch, tokenize, decode, encode, produce, ack) runs as it does with a model: `socialpulse bench` uses it
to measure the pipeline's own ceiling. Values are fixed pseudo-random rows (seeded), sliced per batch,
so labels vary across posts but cost nothing to make.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from stream.backends.base import Outputs


class NullBackend:
    name = "null"
    provider = "none"

    def __init__(self, widths: Mapping[str, int], variant: str, max_batch_size: int, seed: int = 7) -> None:
        self.variant = variant
        rng = np.random.default_rng(seed)
        self._rows = {
            name: rng.standard_normal((max_batch_size, width)).astype(np.float32) for name, width in widths.items()
        }

    @classmethod
    def like(cls, model_path: Path, variant: str, max_batch_size: int) -> NullBackend:
        """Shaped like the graph at model_path (its output names and fixed widths)."""
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        widths = {output.name: int(output.shape[1]) for output in session.get_outputs()}
        return cls(widths, variant, max_batch_size)

    @property
    def output_names(self) -> list[str]:
        return list(self._rows)

    def run(self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]) -> Outputs:
        batch = input_ids.shape[0]
        # A batch of one post over the limit is still served: repeat rows rather than fail.
        return {name: np.resize(rows, (batch, rows.shape[1])) for name, rows in self._rows.items()}

    def warmup(self, shapes: Iterable[tuple[int, int]]) -> None:
        return None
