"""Held-out evaluation of a built model: sentiment on the fixed tweet test split (vs VADER), per language on
each served language's held-out split (vs its baselines), the hand-labelled multilingual posts, behaviour on
the hand-made test posts, and int8-vs-fp32 agreement. Runs the shipped ONNX files through the runtime, not PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.behaviour import BEHAVIOUR_LABELS, load_behaviour
from models.corpora import LANGUAGES, LabelledText, Language, labels_of, split_language
from models.data import SENTIMENT_LABELS, SPLIT_SEED, TEST_FRACTION, RatedText, load_rated, split_tweets
from models.handset import load_handset
from models.heads import precision_recall
from models.runtime import OnnxClassifier
from stream.backends.cpu import cpu_features
from stream.infer import head_logits
from stream.lexicon import lexicon_features

# VADER's documented decision rule on the compound score.
VADER_THRESHOLD = 0.05
# snownlp's own decision rule: SnowNLP(text).sentiments is P(positive).
SNOWNLP_THRESHOLD = 0.5


def classification_report(truth: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    y = np.asarray(truth)
    p = np.asarray(predicted)
    per_label: dict[str, dict[str, float]] = {}
    f1s = []
    for index, label in enumerate(labels):
        tp = float(np.sum((p == index) & (y == index)))
        precision = tp / max(1.0, float(np.sum(p == index)))
        recall = tp / max(1.0, float(np.sum(y == index)))
        f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
        f1s.append(f1)
        per_label[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": int(np.sum(y == index)),
        }
    return {
        "accuracy": round(float(np.mean(y == p)), 4),
        "macro_f1": round(float(np.mean(f1s)), 4),
        "per_label": per_label,
        "test_size": len(y),
    }


def vader_predictions(texts: Sequence[str]) -> list[int]:
    compound = lexicon_features(["compound"], texts)[:, 0]
    labels: list[int] = np.where(compound >= VADER_THRESHOLD, 2, np.where(compound <= -VADER_THRESHOLD, 0, 1)).tolist()
    return labels


def restricted_report(truth: Sequence[int], logits: npt.NDArray[np.float32], allowed: Sequence[int]) -> dict[str, Any]:
    """Accuracy and macro-F1 over the labels a corpus uses: a binary corpus is scored on its two logits."""
    columns = list(allowed)
    predicted = [columns[i] for i in logits[:, columns].argmax(-1).tolist()]
    report = classification_report(truth, predicted, SENTIMENT_LABELS)
    f1s = [report["per_label"][SENTIMENT_LABELS[i]]["f1"] for i in columns]
    return {"accuracy": report["accuracy"], "macro_f1": round(float(np.mean(f1s)), 4), "test_size": len(truth)}


def tfidf_lr_predictions(
    lang: Language, texts: Sequence[str], train: Sequence[LabelledText] | None = None
) -> list[int]:
    """TF-IDF (character 1-3-grams for zh, word 1-2-grams otherwise) + logistic regression on lang's training
    split (or `train`).

    sklearn's defaults (C=1) and balanced class weights, chosen before looking at any test score.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    if train is None:
        train, _ = split_language(lang)
    analyzer, ngrams = ("char", (1, 3)) if lang == "zh" else ("word", (1, 2))
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True)
    features = vectorizer.fit_transform([r.text for r in train])
    model = LogisticRegression(class_weight="balanced", max_iter=5000).fit(features, [r.label for r in train])
    predicted: list[int] = model.predict(vectorizer.transform(list(texts))).tolist()
    return predicted


def onehot(predicted: Sequence[int]) -> npt.NDArray[np.float32]:
    """Hard labels as logits, so restricted_report scores a baseline as it scores a model."""
    rows: npt.NDArray[np.float32] = np.eye(len(SENTIMENT_LABELS), dtype=np.float32)[list(predicted)]
    return rows


def snownlp_predictions(texts: Sequence[str]) -> list[int]:
    from snownlp import SnowNLP

    return [2 if SnowNLP(text).sentiments >= SNOWNLP_THRESHOLD else 0 for text in texts]


def baselines(lang: Language, texts: Sequence[str], truth: Sequence[int]) -> dict[str, dict[str, float]]:
    allowed = labels_of(lang)
    named: dict[str, list[int]] = {}
    if lang == "en":
        named["vader"] = vader_predictions(texts)
    else:
        named["tfidf_lr"] = tfidf_lr_predictions(lang, texts)
    if lang == "zh":
        named["snownlp"] = snownlp_predictions(texts)
    scores: dict[str, dict[str, float]] = {}
    for name, predicted in named.items():
        report = restricted_report(truth, onehot(predicted), allowed)
        scores[name] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    if "snownlp" in scores:
        scores["snownlp"]["note"] = "reference only: snownlp's shipped model was trained on these sentences"  # type: ignore[assignment]
    return scores


def evaluate_languages(classifiers: dict[str, OnnxClassifier], languages: Sequence[Language]) -> dict[str, Any]:
    """`sentiment.by_language`: each language's held-out split, served logits, vs the baselines."""
    by_language: dict[str, Any] = {}
    for lang in languages:
        _, test = split_language(lang)
        texts, truth = [r.text for r in test], [r.label for r in test]
        served = {variant: served_sentiment(classifier, texts) for variant, classifier in classifiers.items()}
        report = restricted_report(truth, served["fp32"], labels_of(lang))
        report["baselines"] = baselines(lang, texts, truth)
        if "int8" in served:
            report["int8"] = restricted_report(truth, served["int8"], labels_of(lang))
            report["int8_vs_fp32_top_label_agreement"] = round(
                float(np.mean(served["int8"].argmax(-1) == served["fp32"].argmax(-1))), 4
            )
        by_language[lang] = report
    return by_language


def evaluate_handset(classifier: OnnxClassifier) -> dict[str, Any]:
    """Per language: positive-vs-negative accuracy on the plain posts, 3-class accuracy on the hard ones."""
    posts = load_handset()
    logits = served_sentiment(classifier, [p.text for p in posts])
    truth = np.asarray([SENTIMENT_LABELS.index(p.label) for p in posts])
    plain = np.asarray([p.kind == "plain" for p in posts])
    binary = np.where(logits[:, 2] >= logits[:, 0], 2, 0)
    three = logits.argmax(-1)
    langs = np.asarray([p.lang for p in posts])
    by_language: dict[str, dict[str, float]] = {}
    for lang in dict.fromkeys(p.lang for p in posts):
        here = langs == lang
        by_language[lang] = {
            "plain_accuracy": round(float(np.mean(binary[here & plain] == truth[here & plain])), 4),
            "plain_size": int(np.sum(here & plain)),
            "hard_accuracy": round(float(np.mean(three[here & ~plain] == truth[here & ~plain])), 4),
            "hard_size": int(np.sum(here & ~plain)),
        }
    return {
        "plain_accuracy": round(float(np.mean(binary[plain] == truth[plain])), 4),
        "plain_size": int(np.sum(plain)),
        "hard_accuracy": round(float(np.mean(three[~plain] == truth[~plain])), 4),
        "by_language": by_language,
        "variant": classifier.variant,
        "note": "hand-written posts, evaluation only; see models/data/handset/README.md",
    }


def served_sentiment(classifier: OnnxClassifier, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    head = classifier.manifest.head("sentiment")
    if head is None:
        raise ValueError(f"{classifier.model_dir}: evaluation needs a model with a sentiment head")
    return head_logits(head, classifier.raw(texts)["sentiment_logits"], texts)


def held_out_tweets() -> list[RatedText]:
    return split_tweets(load_rated("tweets"))[1]


def evaluate(model_dir: Path, threads: int = 0) -> dict[str, Any]:
    tweets = held_out_tweets()
    texts = [t.text for t in tweets]
    truth = [t.label for t in tweets]
    posts = load_behaviour("test")
    post_texts = [p.text for p in posts]
    targets = np.asarray([p.targets() for p in posts])

    results: dict[str, Any] = {}
    outputs: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    classifier = OnnxClassifier.from_dir(model_dir, "fp32", backend="cpu", threads=threads)
    manifest = classifier.manifest
    sentiment_head = manifest.head("sentiment")
    if sentiment_head is None:
        raise ValueError(f"{model_dir}: evaluation needs a model with a sentiment head")
    variants = [v for v in ("fp32", "int8") if v in manifest.variants]
    classifiers = {"fp32": classifier}
    for variant in variants:
        if variant != "fp32":
            classifier = classifiers[variant] = OnnxClassifier.from_dir(
                model_dir, variant, backend="cpu", threads=threads
            )
        outputs[variant] = classifier.raw(texts)
        behaviour_scores = 1.0 / (1.0 + np.exp(-classifier.raw(post_texts)["behaviour_logits"]))
        outputs[variant]["behaviour_scores"] = behaviour_scores.astype(np.float32)
        graph_logits = outputs[variant]["sentiment_logits"]
        # What the processor serves: the graph's logits through the head's fusion, when it has one.
        outputs[variant]["sentiment_served"] = head_logits(sentiment_head, graph_logits, texts)
        predicted = outputs[variant]["sentiment_served"].argmax(-1).tolist()
        results["sentiment" if variant == "fp32" else f"sentiment_{variant}"] = {
            **classification_report(truth, predicted, SENTIMENT_LABELS),
            "variant": variant,
        }
        if sentiment_head.fusion is not None and variant == "fp32":
            results["sentiment_graph_only"] = {
                **classification_report(truth, graph_logits.argmax(-1).tolist(), SENTIMENT_LABELS),
                "variant": variant,
                "note": "the graph's logits without the lexicon fusion",
            }

    head = manifest.head("behaviour")
    thresholds = head.thresholds if head else {}
    results["behaviour"] = precision_recall(
        outputs["fp32"]["behaviour_scores"].astype(np.float64), targets, BEHAVIOUR_LABELS, thresholds
    )
    results["behaviour_summary"] = {
        "macro_f1": round(float(np.mean([v["f1"] for v in results["behaviour"].values()])), 4),
        "test_size": len(posts),
        "variant": "fp32",
        "note": "small hand-written test set; see models/data/behaviour/README.md",
    }
    vader = vader_predictions(texts)
    results["vader"] = classification_report(truth, vader, SENTIMENT_LABELS)
    results["sentiment"]["macro_f1_over_vader"] = round(
        results["sentiment"]["macro_f1"] - results["vader"]["macro_f1"], 4
    )
    if "int8" in outputs:
        fp32_top = outputs["fp32"]["sentiment_served"].argmax(-1)
        int8_top = outputs["int8"]["sentiment_served"].argmax(-1)
        flags = [
            outputs[v]["behaviour_scores"] >= np.asarray([thresholds.get(x, 0.5) for x in BEHAVIOUR_LABELS])
            for v in ("fp32", "int8")
        ]
        results["int8_vs_fp32"] = {
            "top_label_agreement": round(float(np.mean(fp32_top == int8_top)), 4),
            "behaviour_flag_agreement": round(float(np.mean(flags[0] == flags[1])), 4),
            "max_abs_logit_diff": round(
                float(np.max(np.abs(outputs["fp32"]["sentiment_logits"] - outputs["int8"]["sentiment_logits"]))), 4
            ),
            "samples": len(texts),
        }
    # Languages with a labelled corpus; the others a manifest declares were validated on the hand set below.
    languages = [lang for lang in LANGUAGES if lang in manifest.languages and lang != "en"]
    results["sentiment"]["by_language"] = {
        # The English split is the held-out tweets scored above.
        "en": {
            "accuracy": results["sentiment"]["accuracy"],
            "macro_f1": results["sentiment"]["macro_f1"],
            "test_size": len(tweets),
            "baselines": {
                "vader": {"accuracy": results["vader"]["accuracy"], "macro_f1": results["vader"]["macro_f1"]}
            },
        },
        **evaluate_languages(classifiers, languages),
    }
    results["handset"] = evaluate_handset(classifiers["fp32"])
    results["test_sizes"] = {"tweets": len(tweets), "behaviour": len(posts)}
    results["split"] = {"seed": SPLIT_SEED, "test_fraction": TEST_FRACTION, "stratified_by": "label"}
    results["model"] = {"name": manifest.name, "version": manifest.version, "variants": variants}
    # int8 arithmetic (and so int8_vs_fp32) can depend on these: models/saturation.py.
    results["cpu"] = cpu_features()
    return results
