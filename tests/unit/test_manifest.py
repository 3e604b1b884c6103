"""Every file a model loads is checked against its manifest: inside the model folder, hashing as recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models

from models.manifest import (
    Head,
    Manifest,
    ManifestError,
    Source,
    Variant,
    sha256_of,
    verified_tokenizer_path,
    verified_variant_path,
)
from stream.tokenize import PostTokenizer


def manifest_for(model_dir: Path, **changes: object) -> Manifest:
    fields: dict[str, object] = {
        "name": "m",
        "version": "1",
        "max_seq_len": 16,
        "tokenizer": "tokenizer.json",
        "tokenizer_sha256": sha256_of(model_dir / "tokenizer.json"),
        "heads": [Head(name="sentiment", output="logits", activation="softmax", labels=["n", "p"])],
        "variants": {"fp32": Variant("model.onnx", sha256_of(model_dir / "model.onnx"), "cpu")},
        "source": Source(kind="exported", location="test"),
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


@pytest.fixture
def model_dir(tmp_path: Path, tokenizer_file: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(tokenizer_file.read_bytes())
    (folder / "model.onnx").write_bytes(b"graph")
    return folder


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    path = tmp_path / "source-tokenizer.json"
    Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
    return path


def test_the_tokenizer_loads_only_as_recorded(model_dir: Path) -> None:
    manifest = manifest_for(model_dir)
    assert PostTokenizer.for_model(model_dir, manifest).max_seq_len == 16
    # A tokenizer swapped under a model gives it ids it was not trained on: refused, not served.
    (model_dir / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes().replace(b"UNK", b"UNQ"))
    with pytest.raises(ManifestError, match="does not match"):
        PostTokenizer.for_model(model_dir, manifest)


def test_a_manifest_without_a_tokenizer_hash_is_refused(model_dir: Path) -> None:
    with pytest.raises(ManifestError, match="records no sha256 for tokenizer"):
        verified_tokenizer_path(model_dir, manifest_for(model_dir, tokenizer_sha256=""))


@pytest.mark.parametrize("outside", ["../model.onnx", "/etc/hostname"])
def test_files_outside_the_model_folder_are_refused(model_dir: Path, outside: str) -> None:
    (model_dir.parent / "model.onnx").write_bytes(b"graph")
    variant = Variant(outside, sha256_of(model_dir / "model.onnx"), "cpu")
    with pytest.raises(ManifestError, match="outside the model folder"):
        verified_variant_path(model_dir, manifest_for(model_dir, variants={"fp32": variant}), "fp32")
    with pytest.raises(ManifestError, match="outside the model folder"):
        verified_tokenizer_path(model_dir, manifest_for(model_dir, tokenizer=outside))
