"""The sentiment head's lexicon fusion: manifest validation, how the runtime applies it, and how it is fitted."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from sklearn.metrics import f1_score

from models.data import SENTIMENT_LABELS, load_rated, split_tweets
from models.fusion import fit_fusion
from models.manifest import Head, LexiconFusion, Manifest, Source
from stream.infer import decode_outputs, head_logits
from stream.lexicon import LEXICON_MAX_CHARS, VADER_FEATURES, lexicon_features

LABELS = list(SENTIMENT_LABELS)
# Ignores the graph and follows VADER's compound score: negative, neutral, positive.
COMPOUND_ONLY = LexiconFusion(
    lexicon="vader",
    features=list(VADER_FEATURES),
    weight=[[0, 0, 0, 0, 0, 0, -4], [0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 4]],
    bias=[0.0, 1.0, 0.0],
)


def _sentiment_head(fusion: LexiconFusion | None) -> Head:
    return Head(name="sentiment", output="sentiment_logits", activation="softmax", labels=LABELS, fusion=fusion)


def test_lexicon_features_follow_the_named_order() -> None:
    texts = ["I love this, it is wonderful!", "This is terrible. I hate it.", ""]
    features = lexicon_features(["compound", "pos"], texts)
    assert features.shape == (3, 2) and features.dtype == np.float32
    assert features[0, 0] > 0.5 and features[0, 1] > 0.3
    assert features[1, 0] < -0.5 and features[1, 1] == 0.0
    assert features[2].tolist() == [0.0, 0.0]


def test_head_without_fusion_keeps_graph_logits() -> None:
    logits = np.asarray([[0.1, 0.2, 0.3]], dtype=np.float32)
    assert head_logits(_sentiment_head(None), logits, ["anything"]) is logits


def test_fusion_reweights_graph_logits_with_lexicon_scores() -> None:
    texts = ["I love this, it is wonderful!", "This is terrible. I hate it.", "The store opens at nine."]
    # The graph says "positive" for all three; this fusion listens only to the lexicon.
    graph = np.tile(np.asarray([0.0, 0.0, 5.0], dtype=np.float32), (3, 1))
    outputs = {"sentiment_logits": graph}
    manifest = Manifest(
        name="fusion-test",
        version="0",
        max_seq_len=16,
        tokenizer="tokenizer.json",
        heads=[_sentiment_head(COMPOUND_ONLY)],
        variants={},
        source=Source(kind="exported", location="test"),
    )
    predictions = decode_outputs(manifest, outputs, texts)
    assert [p.heads["sentiment"].labels[0] for p in predictions] == ["positive", "negative", "neutral"]
    for prediction in predictions:
        assert abs(sum(prediction.heads["sentiment"].scores.values()) - 1.0) < 1e-5


@pytest.mark.parametrize(
    ("weight", "bias", "activation"),
    [
        ([[0.0] * 7] * 3, [0.0, 0.0], "softmax"),  # two biases for three labels
        ([[0.0] * 6] * 3, [0.0] * 3, "softmax"),  # rows one feature short
        ([[0.0] * 7] * 2, [0.0] * 3, "softmax"),  # a row missing
        ([[0.0] * 7] * 3, [0.0] * 3, "sigmoid"),  # fusion on a multi-label head
    ],
)
def test_manifest_refuses_malformed_fusion(weight: list[list[float]], bias: list[float], activation: str) -> None:
    head = {
        "name": "sentiment",
        "output": "sentiment_logits",
        "activation": activation,
        "labels": LABELS,
        "fusion": {"lexicon": "vader", "features": list(VADER_FEATURES), "weight": weight, "bias": bias},
    }
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(head), type=Head)


def test_fit_uses_the_lexicon_when_the_graph_knows_nothing() -> None:
    tweets, _ = split_tweets(load_rated("tweets"))
    sample = tweets[:1200]
    texts = [t.text for t in sample]
    labels = [t.label for t in sample]
    noise = np.random.default_rng(0).normal(size=(len(sample), 3)).astype(np.float32)
    fusion = fit_fusion(noise, texts, labels)
    assert np.abs(np.asarray(fusion.weight)[:, :3]).max() < 0.2
    predicted = head_logits(_sentiment_head(fusion), noise, texts).argmax(-1)
    # VADER alone scores about 0.68 macro-F1 on these tweets; three-way chance is 0.33.
    assert f1_score(labels, predicted, average="macro") > 0.6


def test_fit_keeps_an_informative_graph() -> None:
    tweets, _ = split_tweets(load_rated("tweets"))
    sample = tweets[:1200]
    labels = np.asarray([t.label for t in sample])
    # Logits that know the answer: the fit must put its weight on them, beating the lexicon alone.
    oracle = np.eye(3, dtype=np.float32)[labels] * 3.0
    fusion = fit_fusion(oracle, [t.text for t in sample], labels.tolist())
    predicted = head_logits(_sentiment_head(fusion), oracle, [t.text for t in sample]).argmax(-1)
    assert float(np.mean(predicted == labels)) > 0.99


def test_lexicon_reads_no_further_than_the_graph() -> None:
    opening = "I love this, it is wonderful! "
    # Past the cap, a wall of negative words must neither change the scores nor cost quadratic time.
    long_text = opening + "x " * 300 + "terrible awful hate " * 2000
    capped = lexicon_features(VADER_FEATURES, [long_text[:LEXICON_MAX_CHARS]])
    assert lexicon_features(VADER_FEATURES, [long_text]).tolist() == capped.tolist()
    assert capped[0, 3] > 0.5
