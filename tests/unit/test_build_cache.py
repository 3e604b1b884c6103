"""The build cache: a second clone (another .cache) reuses a build from the user cache instead of training.

The recipe here writes a small model folder instead of training one: what is under test is the caching,
locking and publishing around any recipe (models/build.py), not a recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from models.build import Recipe, build, cached_build
from models.manifest import Head, Manifest, Source, Variant, load_manifest, sha256_of, write_manifest


def recipe(calls: list[str]) -> Recipe:
    def train_and_export(key: str, out: Path, _console: Console, _timings: dict[str, float]) -> dict[str, Any]:
        calls.append(key)
        graph = out / "model.fp32.onnx"
        graph.write_bytes(b"graph for " + key.encode())
        write_manifest(
            out,
            Manifest(
                name="cache-test",
                version=key,
                max_seq_len=8,
                tokenizer="tokenizer.json",
                heads=[Head(name="sentiment", output="logits", activation="softmax", labels=["a", "b"])],
                variants={"fp32": Variant(file=graph.name, sha256=sha256_of(graph), target="cpu")},
                source=Source(kind="trained", location="test", build_key=key),
            ),
        )
        return {"evaluation": {}}

    return Recipe(
        link="cache-test", name="cache-test", key=lambda: "0123456789abcdef", train_and_export=train_and_export
    )


def test_second_clone_reuses_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCIALPULSE_USER_CACHE_DIR", str(tmp_path / "user"))
    calls: list[str] = []
    monkeypatch.setenv("SOCIALPULSE_CACHE_DIR", str(tmp_path / "clone-1"))
    first = build(recipe=recipe(calls))
    assert calls == ["0123456789abcdef"]
    shared = tmp_path / "user" / "models" / "builds" / "0123456789abcdef"
    assert load_manifest(shared).version == "0123456789abcdef"

    monkeypatch.setenv("SOCIALPULSE_CACHE_DIR", str(tmp_path / "clone-2"))
    second = build(recipe=recipe(calls))
    assert calls == ["0123456789abcdef"], "the second clone trained again"
    assert second == tmp_path / "clone-2" / "models" / "builds" / "0123456789abcdef"
    assert (tmp_path / "clone-2" / "models" / "cache-test").resolve() == second.resolve()
    assert (second / "model.fp32.onnx").read_bytes() == (first / "model.fp32.onnx").read_bytes()


def test_a_tampered_user_cache_build_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCIALPULSE_USER_CACHE_DIR", str(tmp_path / "user"))
    calls: list[str] = []
    monkeypatch.setenv("SOCIALPULSE_CACHE_DIR", str(tmp_path / "clone-1"))
    first = build(recipe=recipe(calls))
    shared = tmp_path / "user" / "models" / "builds" / first.name / "model.fp32.onnx"
    # Hard-linked files are one inode: replace the shared one rather than write through the link.
    shared.unlink()
    shared.write_bytes(b"something else")
    monkeypatch.setenv("SOCIALPULSE_CACHE_DIR", str(tmp_path / "clone-2"))
    build(recipe=recipe(calls))
    assert len(calls) == 2
    # The fresh build replaced the tampered shared copy.
    assert cached_build(first.name, tmp_path / "user" / "models") is not None
