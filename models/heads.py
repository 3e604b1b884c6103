"""The behaviour head: per-label logistic regression on the shared, L2-normalised sentence embedding.

The hand-made set is small (hundreds of posts), so the head is fitted on frozen encoder features
rather than by back-propagating into the encoder; regularisation strength and decision thresholds
are chosen by cross-validation on the training posts only (the test posts are never looked at).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

Array = NDArray[np.float64]

C_GRID: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
THRESHOLD_GRID = np.round(np.arange(0.1, 0.91, 0.025), 3)


class LinearHead(msgspec.Struct, frozen=True):
    # weight [labels, dim], bias [labels]: logits = embedding @ weight.T + bias; sigmoid gives probabilities.
    weight: list[list[float]]
    bias: list[float]
    thresholds: dict[str, float]
    # Per-label C and out-of-fold F1 on the training posts.
    regularisation: dict[str, float]
    cv_f1: dict[str, float]


def _f1(y: NDArray[np.int64], predicted: NDArray[np.bool_]) -> float:
    tp = float(np.sum(predicted & (y == 1)))
    fp = float(np.sum(predicted & (y == 0)))
    fn = float(np.sum(~predicted & (y == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _out_of_fold(x: Array, y: NDArray[np.int64], c: float, folds: int, seed: int) -> Array:
    scores = np.zeros(len(y))
    for train_index, test_index in KFold(folds, shuffle=True, random_state=seed).split(x):
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
        model.fit(x[train_index], y[train_index])
        scores[test_index] = model.predict_proba(x[test_index])[:, 1]
    return scores


def fit_linear_head(
    embeddings: Array, targets: Array, labels: Sequence[str], folds: int = 5, seed: int = 13
) -> LinearHead:
    weight: list[list[float]] = []
    bias: list[float] = []
    thresholds: dict[str, float] = {}
    regularisation: dict[str, float] = {}
    cv_f1: dict[str, float] = {}
    for column, label in enumerate(labels):
        y = targets[:, column].astype(np.int64)
        best: tuple[float, float, float] = (-1.0, 1.0, 0.5)  # (f1, C, threshold)
        for c in C_GRID:
            scores = _out_of_fold(embeddings, y, c, folds, seed)
            for threshold in THRESHOLD_GRID:
                f1 = _f1(y, scores >= threshold)
                if f1 > best[0] + 1e-9:
                    best = (f1, c, float(threshold))
        f1, c, threshold = best
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(embeddings, y)
        weight.append([float(v) for v in model.coef_[0]])
        bias.append(float(model.intercept_[0]))
        thresholds[label] = threshold
        regularisation[label] = c
        cv_f1[label] = round(f1, 4)
    return LinearHead(weight, bias, thresholds, regularisation, cv_f1)


def precision_recall(
    scores: Array, targets: Array, labels: Sequence[str], thresholds: dict[str, float]
) -> dict[str, dict[str, float]]:
    report: dict[str, dict[str, float]] = {}
    for column, label in enumerate(labels):
        y = targets[:, column] == 1
        predicted = scores[:, column] >= thresholds.get(label, 0.5)
        tp = float(np.sum(predicted & y))
        precision = tp / max(1.0, float(np.sum(predicted)))
        recall = tp / max(1.0, float(np.sum(y)))
        f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
        report[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": int(np.sum(y)),
        }
    return report
