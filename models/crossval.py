"""k-fold cross-validation on the training tweets: out-of-fold logits for the fusion, and recipe checks.

Each fold fine-tunes the default recipe (models.recipe.BuildConfig) on the other folds of the 3,360
training tweets and predicts its own; the 840 test tweets are never loaded. The build uses the
out-of-fold logits to fit the sentiment head's lexicon fusion (models.fusion); `socialpulse models cv`
scores the recipe with and without the fusion, each fold's fusion fitted on the other folds only.

Imports torch: training extra only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
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

from models.data import SENTIMENT_LABELS, RatedText, load_rated, split_tweets
from models.fusion import fit_fusion
from models.recipe import MAX_SEQ_LEN, BuildConfig, write_tokenizer
from models.train import MultiTaskModel, encoder_dir, predict, train_sentiment
from stream.infer import fused_logits
from stream.tokenize import PostTokenizer


def fold_indices(labels: Sequence[int], folds: int, seed: int) -> list[NDArray[np.int64]]:
    """Held-out indices of each stratified fold."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(labels)), np.asarray(labels))]


def out_of_fold_logits(
    config: BuildConfig, tweets: Sequence[RatedText], folds: int, console: Console
) -> NDArray[np.float32]:
    """Sentiment logits of every tweet from the fold model that did not train on it ([len(tweets), 3])."""
    train_config = config.train_config()
    logits = np.zeros((len(tweets), len(SENTIMENT_LABELS)), dtype=np.float32)
    everything = np.arange(len(tweets))
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
            for fold, held in enumerate(fold_indices([t.label for t in tweets], folds, config.seed)):
                task = progress.add_task(f"out-of-fold model {fold + 1}/{folds}", total=None)

                def on_step(step: int, total: int, _loss: float, task: TaskID = task) -> None:
                    progress.update(task, completed=step, total=total)

                model = MultiTaskModel.from_pretrained(encoder_dir(), config.seed)
                trained_on = [tweets[i] for i in np.setdiff1d(everything, held)]
                train_sentiment(model, train_tokenizer, train_config, trained_on, on_step)
                logits[held], _, _ = predict(model, predict_tokenizer, [tweets[i].text for i in held])
    return logits


def cross_validate(config: BuildConfig, folds: int, console: Console) -> dict[str, Any]:
    """Per-fold macro-F1 of the graph's logits alone and through a fusion fitted on the other folds."""
    tweets, _ = split_tweets(load_rated("tweets"))
    labels = np.asarray([t.label for t in tweets])
    texts = [t.text for t in tweets]
    logits = out_of_fold_logits(config, tweets, folds, console)
    graph_only: list[float] = []
    fused: list[float] = []
    for held in fold_indices(labels.tolist(), folds, config.seed):
        rest = np.setdiff1d(np.arange(len(tweets)), held)
        fusion = fit_fusion(logits[rest], [texts[i] for i in rest], labels[rest].tolist())
        graph_only.append(_macro_f1(labels[held], logits[held]))
        fused.append(_macro_f1(labels[held], fused_logits(fusion, logits[held], [texts[i] for i in held])))
    return {
        "folds": folds,
        "train_tweets": len(tweets),
        "config": {"seed": config.seed, "epochs": config.epochs, "regression_weight": config.regression_weight},
        "graph_only_macro_f1": {"per_fold": _rounded(graph_only), "mean": round(float(np.mean(graph_only)), 4)},
        "fused_macro_f1": {"per_fold": _rounded(fused), "mean": round(float(np.mean(fused)), 4)},
    }


def _macro_f1(labels: NDArray[np.int64], logits: NDArray[np.float32]) -> float:
    return float(f1_score(labels, logits.argmax(-1), average="macro"))


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(value, 4) for value in values]
