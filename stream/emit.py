"""Emit stage: events and dead letters go out through one idempotent producer; callers await the acks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from aiokafka import AIOKafkaProducer

from stream.schema import BehaviourEvent, BrandMention, ModelRef, RejectReason, SentimentEvent, Timestamps
from stream.validate import SourceRef, ValidPost

# Fixed namespace so an event id depends only on (post id, model version, head).
EVENT_NAMESPACE = uuid.UUID("6f1c2b7e-3d5a-4e0b-9a61-2f8d5c4b7a10")


def event_id(post_id: str, model_version: str, head: str) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{post_id}\x1f{model_version}\x1f{head}"))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Labelled(Protocol):
    """What inference said about a post (the worker's `Enriched`, the backtest's `Classification`)."""

    @property
    def sentiment(self) -> str: ...
    @property
    def sentiment_scores(self) -> dict[str, float]: ...
    @property
    def behaviours(self) -> list[str]: ...
    @property
    def behaviour_scores(self) -> dict[str, float]: ...
    @property
    def embedding(self) -> list[float] | None: ...


def build_mention(valid: ValidPost, brand: str, labels: Labelled) -> BrandMention:
    """One (post, brand) record for the brand monitor; the worker and the backtest build it alike."""
    post = valid.post
    return BrandMention(
        post_id=post.id,
        brand=brand,
        text=post.text,
        created_at=valid.created_at_ms,
        author_id=post.author.id,
        followers=post.author.followers,
        platform=post.platform,
        language=valid.language,
        sentiment=labels.sentiment,
        sentiment_scores=labels.sentiment_scores,
        behaviours=labels.behaviours,
        behaviour_scores=labels.behaviour_scores,
        embedding=labels.embedding,
    )


@dataclass(frozen=True, slots=True)
class Enriched:
    """A valid post with what inference said about it, ready to become events."""

    valid: ValidPost
    ingested_at_ms: int
    sentiment: str
    sentiment_scores: dict[str, float]
    behaviours: list[str]
    behaviour_scores: dict[str, float]
    embedding: list[float] | None
    truncated: bool


@dataclass(frozen=True, slots=True)
class Topics:
    sentiment: str
    behaviour: str
    dlq: str
    mentions: str


class Emitter:
    def __init__(self, producer: AIOKafkaProducer, topics: Topics, model: ModelRef) -> None:
        self._producer = producer
        self._topics = topics
        self._model = model
        self._encoder = msgspec.json.Encoder()

    async def _send(self, topic: str, key: str, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        # send() resolves once the record is in the accumulator; the returned future resolves on the broker ack.
        delivery = await self._producer.send(topic, value=value, key=key.encode(), headers=headers)
        await delivery

    async def emit(self, posts: Sequence[Enriched]) -> dict[str, list[str]]:
        """Send every output of these posts and wait until Kafka acknowledged all of them.

        Returns the labels produced per topic, for metrics. Raises if any send failed: the caller
        must then not ack the inputs.
        """
        sends = []
        labels: dict[str, list[str]] = {self._topics.sentiment: [], self._topics.behaviour: []}
        for enriched in posts:
            for topic, key, value in self._records(enriched):
                sends.append(self._send(topic, key, value))
            labels[self._topics.sentiment].append(enriched.sentiment)
            labels[self._topics.behaviour].extend(enriched.behaviours or ["none"])
        await asyncio.gather(*sends)
        return labels

    def _records(self, enriched: Enriched) -> list[tuple[str, str, bytes]]:
        valid, post = enriched.valid, enriched.valid.post
        # One brand's events share a key, so they stay in order on one partition.
        key = valid.brands[0] if valid.brands else post.id
        timestamps = Timestamps(
            created_at=valid.created_at_ms, ingested_at=enriched.ingested_at_ms, emitted_at=now_ms()
        )
        common: dict[str, Any] = {
            "post_id": post.id,
            "brands": valid.brands,
            "language": valid.language,
            "model": self._model,
            "timestamps": timestamps,
            "platform": post.platform,
            "author_id": post.author.id,
            "truncated": enriched.truncated,
        }
        sentiment = SentimentEvent(
            event_id=event_id(post.id, self._model.version, "sentiment"),
            label=enriched.sentiment,
            scores=enriched.sentiment_scores,
            **common,
        )
        behaviour = BehaviourEvent(
            event_id=event_id(post.id, self._model.version, "behaviour"),
            labels=enriched.behaviours,
            scores=enriched.behaviour_scores,
            **common,
        )
        records = [
            (self._topics.sentiment, key, self._encoder.encode(sentiment)),
            (self._topics.behaviour, key, self._encoder.encode(behaviour)),
        ]
        for brand in valid.brands:
            mention = build_mention(valid, brand, enriched)
            records.append((self._topics.mentions, brand, self._encoder.encode(mention)))
        return records

    async def dead_letter(self, raw: bytes | None, reason: RejectReason, detail: str, source: SourceRef) -> None:
        """The original bytes, untouched, with why and where in headers."""
        headers = [
            ("socialpulse.reason", reason.value.encode()),
            ("socialpulse.detail", detail[:1000].encode("utf-8", "replace")),
            ("socialpulse.source.topic", source.topic.encode()),
            ("socialpulse.source.partition", str(source.partition).encode()),
            ("socialpulse.source.offset", str(source.offset).encode()),
            ("socialpulse.rejected_at", str(now_ms()).encode()),
        ]
        key = f"{source.topic}:{source.partition}:{source.offset}"
        await self._send(self._topics.dlq, key, raw or b"", headers)
