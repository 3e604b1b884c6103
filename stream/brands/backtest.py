"""Backtest: the worker's validation, matching, classification and BrandMonitor over a JSONL file, in event time.

No Kafka and no waiting: posts are validated like the worker validates them, sorted by created_at, matched
against the brands file, classified (labels carried by the post, else the classifier), and fed to the same
BrandMonitor the streaming agent runs, with the same watermark rule. Alerts, window stats and escalations
come out exactly as the worker would emit them for that stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from stream.brands.aspects import Scored, brand_sentiments, split_brands
from stream.brands.model import Alert, AuthorEscalation, BrandStats, FlaggedMention, Output, StoryUpdate
from stream.brands.monitor import BrandMonitor, MonitorConfig
from stream.brands.query import BrandCatalog, post_brands
from stream.brands.stories import StoryTracker
from stream.emit import build_mention
from stream.schema import BrandMention
from stream.validate import Rejection, SourceRef, ValidPost


class Classification(msgspec.Struct, frozen=True):
    sentiment: str
    sentiment_scores: dict[str, float]
    behaviours: list[str] = msgspec.field(default_factory=list)
    behaviour_scores: dict[str, float] = msgspec.field(default_factory=dict)
    embedding: list[float] | None = None


Classifier = Callable[[Sequence[str]], list[Classification]]


class Validate(Protocol):
    def validate(self, raw: bytes | None, source: SourceRef) -> ValidPost | Rejection: ...


class _Labels(msgspec.Struct, frozen=True):
    """Labels a post in the file may carry (e.g. from human ratings); used instead of the classifier."""

    sentiment: str | None = None
    sentiment_scores: dict[str, float] | None = None
    behaviours: list[str] = msgspec.field(default_factory=list)
    behaviour_scores: dict[str, float] = msgspec.field(default_factory=dict)


class BacktestResult(msgspec.Struct):
    posts: int
    rejected: int
    mentions: int
    windows: int
    alerts: list[Alert]
    stats: list[BrandStats]
    escalations: list[AuthorEscalation]
    flagged: list[FlaggedMention]
    stories: list[StoryUpdate]

    def summary(self) -> dict[str, object]:
        return {
            "alerts": msgspec.to_builtins(self.alerts),
            "windows": self.windows,
            "posts": self.posts,
            "rejected": self.rejected,
            "mentions": self.mentions,
            "flagged": len(self.flagged),
            "escalations": msgspec.to_builtins(self.escalations),
            "stories": msgspec.to_builtins(self.stories),
        }


def run_backtest(
    records: Iterable[bytes],
    catalog: BrandCatalog,
    validator: Validate,
    classify: Classifier | None = None,
    config: MonitorConfig | None = None,
    batch_size: int = 256,
    stories: StoryTracker | None = None,
) -> BacktestResult:
    """`records`: raw JSON posts, as they would arrive on the input topic (one per line of the file). Stories
    need embeddings, so only posts the classifier labels (those without labels of their own) join them."""
    valid, rejected = validate_records(records, validator)
    config = config or MonitorConfig()
    monitor = BrandMonitor(config, stories=stories or StoryTracker(config.window_s))
    outputs: list[Output] = []
    mentions = 0
    due: int | None = None
    for mention in brand_mentions(valid, catalog, classify, batch_size):
        now = mention.created_at
        if due is not None and now >= due:
            outputs.extend(monitor.advance(now))
            due = _next_due(monitor)
        outputs.extend(monitor.observe(mention))
        mentions += 1
        if due is None:
            due = _next_due(monitor)
    if valid:
        # End of file: every window closes, as if the stream had gone on quietly.
        horizon = monitor.config.window_s + monitor.config.hop_size_s + monitor.config.allowed_lateness_s
        outputs.extend(monitor.advance(valid[-1][0].created_at_ms + horizon * 1000))
    stats = [o for o in outputs if isinstance(o, BrandStats)]
    return BacktestResult(
        posts=len(valid),
        rejected=rejected,
        mentions=mentions,
        windows=sum(1 for s in stats if s.window.kind == "tumbling"),
        alerts=[o for o in outputs if isinstance(o, Alert)],
        stats=stats,
        escalations=[o for o in outputs if isinstance(o, AuthorEscalation)],
        flagged=[o for o in outputs if isinstance(o, FlaggedMention)],
        stories=[o for o in outputs if isinstance(o, StoryUpdate)],
    )


def validate_records(records: Iterable[bytes], validator: Validate) -> tuple[list[tuple[ValidPost, _Labels]], int]:
    """The valid posts with the labels they carry, in event time, and the number rejected."""
    labels_decoder = msgspec.json.Decoder(_Labels)
    valid: list[tuple[ValidPost, _Labels]] = []
    rejected = 0
    for offset, raw in enumerate(records):
        result = validator.validate(raw, SourceRef("backtest", 0, offset))
        if isinstance(result, Rejection):
            rejected += 1
            continue
        try:
            labels = labels_decoder.decode(raw)
        except msgspec.ValidationError:
            labels = _Labels()
        valid.append((result, labels))
    # Event time: the file's order does not matter, like partitions interleaving in the worker.
    valid.sort(key=lambda item: item[0].created_at_ms)
    return valid, rejected


def brand_mentions(
    valid: Sequence[tuple[ValidPost, _Labels]],
    catalog: BrandCatalog,
    classify: Classifier | None,
    batch_size: int = 256,
) -> Iterator[BrandMention]:
    """The mentions the worker would publish for these posts, in event time: a classified post naming several
    brands gives each its own sentiment, from its span classified in the same call (stream/brands/aspects.py)."""
    for start in range(0, len(valid), batch_size):
        chunk = valid[start : start + batch_size]
        matched = [(v, labels, post_brands(v, catalog)) for v, labels in chunk]
        unlabelled = [(v, brands) for v, labels, brands in matched if brands and labels.sentiment is None]
        if unlabelled and classify is None:
            raise ValueError("posts without sentiment labels need a classifier (build the model first)")
        spans = [split_brands(v.post.text, brands, catalog.brand_terms) or [] for v, brands in unlabelled]
        texts = [v.post.text for v, _ in unlabelled] + [span.text for found in spans for span in found]
        results = iter(classify(texts) if texts and classify is not None else [])
        posts = iter([next(results) for _ in unlabelled])
        own = iter([brand_sentiments(found, [_scored(next(results)) for _ in found]) for found in spans])
        for v, labels, brands in matched:
            if not brands:
                continue
            by_brand: dict[str, Scored] = {}
            if labels.sentiment is not None:
                classification = _labelled(labels)
            else:
                classification, by_brand = next(posts), next(own)
            for brand in brands:
                yield build_mention(v, brand, classification, by_brand.get(brand))


def _scored(classification: Classification) -> Scored:
    return Scored(classification.sentiment, classification.sentiment_scores)


def _labelled(labels: _Labels) -> Classification:
    assert labels.sentiment is not None
    return Classification(
        sentiment=labels.sentiment,
        sentiment_scores=labels.sentiment_scores or {labels.sentiment: 1.0},
        behaviours=labels.behaviours,
        behaviour_scores=labels.behaviour_scores,
    )


def _next_due(monitor: BrandMonitor) -> int | None:
    dues = [d for d in (monitor.next_close_ms(brand) for brand in monitor.brands) if d is not None]
    return min(dues) if dues else None


def onnx_classifier(model_dir: Path) -> Classifier:
    """The real model (models.runtime.OnnxClassifier) as a Classifier."""
    from models.runtime import OnnxClassifier
    from stream.pipeline import BEHAVIOUR_HEAD, SENTIMENT_HEAD

    model = OnnxClassifier.from_dir(model_dir)

    def classify(texts: Sequence[str]) -> list[Classification]:
        results = []
        for prediction in model.classify(list(texts)):
            sentiment = prediction.heads[SENTIMENT_HEAD]
            behaviour = prediction.heads.get(BEHAVIOUR_HEAD)
            results.append(
                Classification(
                    sentiment=sentiment.labels[0],
                    sentiment_scores=sentiment.scores,
                    behaviours=behaviour.labels if behaviour else [],
                    behaviour_scores=behaviour.scores if behaviour else {},
                    embedding=None if prediction.embedding is None else prediction.embedding.tolist(),
                )
            )
        return results

    return classify


def read_records(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]
