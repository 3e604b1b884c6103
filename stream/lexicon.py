"""Lexicon scores for sentiment fusion: what VADER's 7,500 human-rated words say about a text.

Computed on the raw text beside the graph (about 0.1 ms a tweet); the manifest's fusion weights
combine them with the graph's logits (see models.manifest.LexiconFusion).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import numpy.typing as npt
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

FloatArray = npt.NDArray[np.float32]

VADER_FEATURES = ("neg", "neu", "pos", "compound")

# VADER's time grows with the square of the word count (4,000 characters: ~55 ms). The graph reads at
# most 128 tokens, about this many characters of English, so the lexicon reads no further either.
LEXICON_MAX_CHARS = 512


@cache
def _vader() -> SentimentIntensityAnalyzer:
    # Loading the lexicon takes ~20 ms; polarity_scores only reads it, so one instance serves every thread.
    return SentimentIntensityAnalyzer()


def lexicon_features(features: Sequence[str], texts: Sequence[str]) -> FloatArray:
    """[len(texts), len(features)] VADER scores (the manifest's only lexicon), in the order features names them."""
    analyzer = _vader()
    rows = [analyzer.polarity_scores(text[:LEXICON_MAX_CHARS]) for text in texts]
    return np.asarray([[row[name] for name in features] for row in rows], dtype=np.float32).reshape(
        len(texts), len(features)
    )
