"""The model manifest: the only way the processor learns what an ONNX artifact is.

`manifest.json` sits next to the artifacts. Loading is torch-free so the worker can use it.
A variant whose file does not hash to the recorded sha256 is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import msgspec

MANIFEST_FILE = "manifest.json"

Activation = Literal["softmax", "sigmoid"]
VariantName = Literal["fp32", "fp16", "int8"]
# vaderSentiment 3.3.2's polarity_scores.
LexiconName = Literal["vader"]


class ManifestError(RuntimeError):
    """The manifest is missing, malformed, or disagrees with the files beside it."""


class LexiconFusion(msgspec.Struct, frozen=True):
    """Re-weights a softmax head's logits with a sentiment lexicon's scores of the same text.

    final logits = weight @ [graph logits..., lexicon features...] + bias: a logistic regression stacked
    on out-of-fold logits (models.fusion), computed by the runtime after the graph runs.
    """

    lexicon: LexiconName
    # Names of the lexicon scores appended to the graph's logits, in column order.
    features: list[str]
    weight: list[list[float]]
    bias: list[float]


class Head(msgspec.Struct, frozen=True):
    """One classification head: an ONNX output of shape [batch, len(labels)]."""

    name: str
    output: str
    activation: Activation
    labels: list[str]
    # Per-label decision thresholds for sigmoid heads; labels absent here use 0.5.
    thresholds: dict[str, float] = msgspec.field(default_factory=dict)
    fusion: LexiconFusion | None = None

    def __post_init__(self) -> None:
        fusion = self.fusion
        if fusion is None:
            return
        if self.activation != "softmax":
            raise ValueError(f"head {self.name}: lexicon fusion needs a softmax head")
        width = len(self.labels) + len(fusion.features)
        rows = len(self.labels)
        if len(fusion.bias) != rows or len(fusion.weight) != rows or any(len(row) != width for row in fusion.weight):
            raise ValueError(f"head {self.name}: fusion weight must be {rows}x{width} with {rows} biases")


class Parity(msgspec.Struct, frozen=True):
    """How the ONNX variant compares with the PyTorch model on a fixed sample."""

    samples: int
    max_abs_diff: float
    top_label_agreement: float
    reference: str = "pytorch"
    checked_on: str = "cpu"


class Variant(msgspec.Struct, frozen=True):
    file: str
    sha256: str
    # "cpu" or "gpu": which execution providers the variant is meant for.
    target: str
    parity: Parity | None = None


class Source(msgspec.Struct, frozen=True):
    kind: str  # "trained" (built here) or "exported" (any Hugging Face classifier)
    location: str
    build_key: str = ""


class Manifest(msgspec.Struct, frozen=True):
    name: str
    version: str
    max_seq_len: int
    tokenizer: str
    heads: list[Head]
    variants: dict[str, Variant]
    source: Source
    inputs: list[str] = msgspec.field(default_factory=lambda: ["input_ids", "attention_mask"])
    # Output holding the pooled, L2-normalised sentence embedding, when the graph has one.
    embedding_output: str | None = None
    pad_token_id: int = 0
    metrics: dict[str, object] = msgspec.field(default_factory=dict)
    created_at: str = ""
    # Every file the model loads is hashed: the tokenizer decides the ids the graph sees.
    tokenizer_sha256: str = ""
    # ISO 639-1 codes of the languages the model was trained and evaluated on; empty for older manifests.
    languages: list[str] = msgspec.field(default_factory=list)

    def head(self, name: str) -> Head | None:
        return next((head for head in self.heads if head.name == name), None)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    path = model_dir / MANIFEST_FILE
    path.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    return path


def load_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_FILE} in {model_dir}: build or export a model first")
    try:
        return msgspec.json.decode(path.read_bytes(), type=Manifest)
    except msgspec.ValidationError as error:
        raise ManifestError(f"{path}: {error}") from error


def verified_file(model_dir: Path, relative: str, sha256: str, what: str) -> Path:
    """A file the manifest names, after checking it stays inside the model folder and hashes as recorded."""
    path = model_dir / relative
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise ManifestError(f"refusing {what} {relative!r}: it is outside the model folder {model_dir}")
    if not path.is_file():
        raise ManifestError(f"{what} file {path} is missing")
    if not sha256:
        raise ManifestError(f"the manifest records no sha256 for {what} {relative!r}: rebuild or re-export the model")
    actual = sha256_of(path)
    if actual != sha256:
        raise ManifestError(f"refusing {path}: sha256 {actual} does not match the manifest's {sha256}")
    return path


def verified_variant_path(model_dir: Path, manifest: Manifest, variant: str) -> Path:
    """The variant's file, after checking it hashes to what the manifest recorded."""
    if variant not in manifest.variants:
        raise ManifestError(
            f"model {manifest.name} {manifest.version} has no variant {variant!r} (has {sorted(manifest.variants)})"
        )
    entry = manifest.variants[variant]
    return verified_file(model_dir, entry.file, entry.sha256, f"variant {variant!r}")


def verified_tokenizer_path(model_dir: Path, manifest: Manifest) -> Path:
    return verified_file(model_dir, manifest.tokenizer, manifest.tokenizer_sha256, "tokenizer")
