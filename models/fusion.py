"""Fits the sentiment head's lexicon fusion: a logistic regression stacked on out-of-fold logits.

A fine-tune on 3,360 tweets and VADER's lexicon of 7,500 human-rated words get different tweets
wrong, and most errors sit near a class boundary (MODEL_CARD.md). Stacking the two with a 3-class
logistic regression lifted cross-validated macro-F1 by about 2 points. The regression must see
logits of tweets the encoder was not trained on: on its own training tweets a fine-tune is
over-confident, and the fit would learn to ignore the lexicon.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression

from models.manifest import LexiconFusion
from stream.lexicon import VADER_FEATURES, lexicon_features

# Inverse regularisation; 0.1 and 1.0 scored within 0.001 in cross-validation.
FUSION_C = 1.0


def fit_fusion(logits: NDArray[np.float32], texts: Sequence[str], labels: Sequence[int]) -> LexiconFusion:
    """Class-balanced (macro-F1 weighs the small neutral class equally) fit on out-of-fold logits."""
    features = np.hstack([logits, lexicon_features(VADER_FEATURES, texts)]).astype(np.float64)
    model = LogisticRegression(C=FUSION_C, class_weight="balanced", max_iter=5000)
    model.fit(features, np.asarray(labels))
    return LexiconFusion(
        lexicon="vader",
        features=list(VADER_FEATURES),
        weight=[[round(float(v), 6) for v in row] for row in model.coef_],
        bias=[round(float(v), 6) for v in model.intercept_],
    )
