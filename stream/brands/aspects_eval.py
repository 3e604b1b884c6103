"""Per-brand sentiment on the hand-written multi-brand set (models/data/multibrand/): the post's label given
to every brand against each brand's own span (stream/brands/aspects.py), per split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from stream.brands.aspects import Scored, brand_sentiments, split_brands
from stream.settings import REPO_ROOT

MULTIBRAND_DIR = REPO_ROOT / "models/data/multibrand"
SPLITS = ("dev", "test")
LABELS = ("negative", "neutral", "positive")

# Texts in, (label, scores) per text out, in order.
Classify = Callable[[Sequence[str]], list[Scored]]


class MultiBrandPost(msgspec.Struct, frozen=True):
    id: str
    text: str
    # brand -> negative / neutral / positive
    labels: dict[str, str]


def load_split(split: str, directory: Path = MULTIBRAND_DIR) -> list[MultiBrandPost]:
    decoder = msgspec.json.Decoder(MultiBrandPost)
    lines = (directory / f"{split}.jsonl").read_bytes().splitlines()
    return [decoder.decode(line) for line in lines if line.strip()]


def predict_brands(posts: Sequence[MultiBrandPost], classify: Classify) -> tuple[list[str], list[str]]:
    """Per (post, brand) in file order: the post-level label, and the brand's own (its span's, else the post's).

    Post texts and span texts go through `classify` in one call, as the worker runs spans in the post's batch."""
    spans = [split_brands(post.text, list(post.labels)) or [] for post in posts]
    texts = [post.text for post in posts] + [span.text for post_spans in spans for span in post_spans]
    results = iter(classify(texts))
    post_level = [next(results) for _ in posts]
    post_labels: list[str] = []
    own_labels: list[str] = []
    for post, whole, post_spans in zip(posts, post_level, spans, strict=True):
        own = brand_sentiments(post_spans, [next(results) for _ in post_spans])
        for brand in post.labels:
            post_labels.append(whole.label)
            own_labels.append(own.get(brand, whole).label)
    return post_labels, own_labels


def evaluate(classify: Classify, splits: Sequence[str] = SPLITS, directory: Path = MULTIBRAND_DIR) -> dict[str, Any]:
    """{split: {"post_level": report, "per_brand": report, "accuracy_gain": ..., "macro_f1_gain": ...}}."""
    from models.evaluate import classification_report

    index = {label: n for n, label in enumerate(LABELS)}
    results: dict[str, Any] = {}
    for split in splits:
        posts = load_split(split, directory)
        truth = [index[post.labels[brand]] for post in posts for brand in post.labels]
        post_level, per_brand = predict_brands(posts, classify)
        reports = {
            "post_level": classification_report(truth, [index[label] for label in post_level], LABELS),
            "per_brand": classification_report(truth, [index[label] for label in per_brand], LABELS),
        }
        results[split] = {
            "posts": len(posts),
            **reports,
            "accuracy_gain": round(reports["per_brand"]["accuracy"] - reports["post_level"]["accuracy"], 4),
            "macro_f1_gain": round(reports["per_brand"]["macro_f1"] - reports["post_level"]["macro_f1"], 4),
        }
    return results


def onnx_classify(model_dir: Path) -> Classify:
    from models.runtime import OnnxClassifier
    from stream.pipeline import SENTIMENT_HEAD

    model = OnnxClassifier.from_dir(model_dir)

    def classify(texts: Sequence[str]) -> list[Scored]:
        heads = [prediction.heads[SENTIMENT_HEAD] for prediction in model.classify(list(texts))]
        return [Scored(head.labels[0], head.scores) for head in heads]

    return classify
