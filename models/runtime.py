"""Torch-free inference over a manifest-described ONNX model, for `socialpulse classify` and `models eval`.

A thin composition of the processor's own pieces (tokenizer, padding, ONNX Runtime backend, head
decoding), so offline classification and the stream worker cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.manifest import Manifest, ManifestError, load_manifest
from stream.backends.base import InferenceBackend, Outputs
from stream.backends.select import select_backend
from stream.infer import Prediction, decode_outputs
from stream.tokenize import PostTokenizer, pad

IntArray = npt.NDArray[np.int64]


def encode(tokenizer: PostTokenizer, texts: Sequence[str]) -> tuple[IntArray, IntArray]:
    """(input_ids, attention_mask), truncated to max_seq_len and right-padded to the batch's longest text."""
    return pad([ids for ids, _ in tokenizer.encode(texts)], 1, tokenizer.pad_token_id)


class OnnxClassifier:
    """A manifest-verified model (sha256 checked on load) ready to classify batches of texts."""

    def __init__(self, model_dir: Path, manifest: Manifest, backend: InferenceBackend) -> None:
        self.model_dir = model_dir
        self.manifest = manifest
        self.backend = backend
        missing = [head.output for head in manifest.heads if head.output not in backend.output_names]
        if missing:
            raise ManifestError(f"{model_dir}: the graph lacks outputs {missing} named in the manifest")
        self.tokenizer = PostTokenizer.for_model(model_dir, manifest)

    @classmethod
    def from_dir(
        cls, model_dir: Path, variant: str | None = None, backend: str = "auto", threads: int = 0
    ) -> OnnxClassifier:
        """Load through the manifest; variant None picks the best one for the backend (int8 on CPU)."""
        model_dir = model_dir.resolve()
        manifest = load_manifest(model_dir)
        chosen = select_backend(model_dir, manifest, backend, variant or "auto", intra_op_threads=threads)
        return cls(model_dir, manifest, chosen)

    @property
    def variant(self) -> str:
        return self.backend.variant

    @property
    def version(self) -> str:
        return f"{self.manifest.name}-{self.manifest.version}-{self.variant}"

    def raw(self, texts: Sequence[str], batch_size: int = 64) -> Outputs:
        """Graph outputs for texts in input order, run in length-sorted batches to keep padding small."""
        if not texts:
            return {}
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts: dict[str, list[npt.NDArray[np.float32]]] = {}
        for start in range(0, len(order), batch_size):
            input_ids, attention_mask = encode(self.tokenizer, [texts[i] for i in order[start : start + batch_size]])
            for name, value in self.backend.run(input_ids, attention_mask).items():
                parts.setdefault(name, []).append(value)
        inverse = np.argsort(np.asarray(order))
        return {name: np.concatenate(values)[inverse] for name, values in parts.items()}

    def classify(self, texts: Sequence[str], batch_size: int = 64) -> list[Prediction]:
        if not texts:
            return []
        return decode_outputs(self.manifest, self.raw(texts, batch_size), texts)
