"""k-fold cross-validation of the sentiment recipe on the training tweets: how recipe choices are made.

Each fold fine-tunes the default recipe (models.recipe.BuildConfig) on the other folds of the 3,360
training tweets and predicts its own; the 840 test tweets are never loaded. Besides the per-fold
macro-F1 it scores a range of neutral-logit offsets on the same predictions, which is how
`BuildConfig.neutral_logit_offset` was chosen. About 2.5 minutes per fold on 2 cores.

Imports torch: training extra only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from models.data import SENTIMENT_LABELS, load_rated, split_tweets
from models.recipe import MAX_SEQ_LEN, BuildConfig, write_tokenizer
from models.train import MultiTaskModel, encoder_dir, predict, train_sentiment
from stream.batch import PostTokenizer

OFFSETS = tuple(round(0.1 * step, 1) for step in range(16))


def cross_validate(config: BuildConfig, folds: int, console: Console) -> dict[str, Any]:
    """Per-fold macro-F1 (offset 0) and the mean macro-F1 over folds at each neutral-logit offset."""
    tweets, _ = split_tweets(load_rated("tweets"))
    labels = np.asarray([t.label for t in tweets])
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    train_config = config.train_config()
    per_fold: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_file = Path(scratch) / "tokenizer.json"
        write_tokenizer(encoder_dir() / "tokenizer.json", tokenizer_file)
        train_tokenizer = PostTokenizer(tokenizer_file, train_config.max_len, 0)
        predict_tokenizer = PostTokenizer(tokenizer_file, MAX_SEQ_LEN, 0)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as progress:
            for fold, (train_index, held_index) in enumerate(splitter.split(np.zeros(len(tweets)), labels)):
                task = progress.add_task(f"fold {fold + 1}/{folds}", total=None)

                def on_step(step: int, total: int, _loss: float, task: TaskID = task) -> None:
                    progress.update(task, completed=step, total=total)

                model = MultiTaskModel.from_pretrained(encoder_dir(), config.seed)
                train_sentiment(model, train_tokenizer, train_config, [tweets[i] for i in train_index], on_step)
                logits, _, _ = predict(model, predict_tokenizer, [tweets[i].text for i in held_index])
                per_fold.append({"labels": labels[held_index], "logits": logits})
                console.log(f"fold {fold + 1}: macro-F1 {_macro_f1(per_fold[-1], 0.0):.4f}")
    curve = {offset: float(np.mean([_macro_f1(fold, offset) for fold in per_fold])) for offset in OFFSETS}
    best = max(curve, key=lambda offset: curve[offset])
    return {
        "folds": folds,
        "train_tweets": len(tweets),
        "config": {"seed": config.seed, "epochs": config.epochs, "regression_weight": config.regression_weight},
        "fold_macro_f1": [round(_macro_f1(fold, 0.0), 4) for fold in per_fold],
        "macro_f1_by_neutral_offset": {str(offset): round(score, 4) for offset, score in curve.items()},
        "best_neutral_offset": best,
    }


def _macro_f1(fold: dict[str, Any], neutral_offset: float) -> float:
    shift: Sequence[float] = [neutral_offset if label == "neutral" else 0.0 for label in SENTIMENT_LABELS]
    predicted = (fold["logits"] + np.asarray(shift)).argmax(-1)
    return float(f1_score(fold["labels"], predicted, average="macro"))
