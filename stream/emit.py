"""Emit stage: events and dead letters go out through one idempotent producer; callers await the acks.

A batch's events are appended to one aiokafka record batch per (topic, partition) and submitted with
`send_batch`: one future per partition batch instead of one task and one future per record. Under
`send()` per record the producer was most of the worker's time (py-spy, bench/README.md): each record
waited in `add_message` for its partition's 16 kB batch to drain. Partitions are chosen with aiokafka's
own default partitioner (murmur2 of the key), so a key lands where `send()` would have put it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from stream.brands.aspects import Scored
from stream.schema import BehaviourEvent, BrandMention, ModelRef, RejectReason, SentimentEvent, Timestamps
from stream.validate import SourceRef, ValidPost

# Fixed namespace so an event id depends only on (post id, model version, head).
EVENT_NAMESPACE = uuid.UUID("6f1c2b7e-3d5a-4e0b-9a61-2f8d5c4b7a10")


def event_id(post_id: str, model_version: str, head: str) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{post_id}\x1f{model_version}\x1f{head}"))


# A pooled sentence embedding, as the model returns it or as a backtest reads it from JSON.
Embedding = npt.NDArray[np.float32] | Sequence[float]


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
    def embedding(self) -> Embedding | None: ...


def compact_embedding(embedding: Embedding | None) -> bytes | None:
    """Little-endian float16 bytes (base64 in JSON): 1 kB a 384-d vector instead of ~3.5 kB of decimal text.

    The embedding is L2-normalised, so float16's 3 significant digits keep cosines to about 1e-3.
    """
    return None if embedding is None else np.asarray(embedding, dtype="<f2").tobytes()


def build_mention(valid: ValidPost, brand: str, labels: Labelled, own: Scored | None = None) -> BrandMention:
    """One (post, brand) record for the brand monitor; the worker and the backtest build it alike.

    `own`: the brand's own sentiment in a post naming several (stream/brands/aspects.py), else the post's."""
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
        sentiment=labels.sentiment if own is None else own.label,
        sentiment_scores=labels.sentiment_scores if own is None else own.scores,
        post_sentiment=labels.sentiment,
        behaviours=labels.behaviours,
        behaviour_scores=labels.behaviour_scores,
        embedding_f16=compact_embedding(labels.embedding),
    )


@dataclass(frozen=True, slots=True)
class Enriched:
    """A valid post with what inference said about it, ready to become events."""

    valid: ValidPost
    # The model that classified it (in a worker with several, the one serving the post's language).
    model: ModelRef
    ingested_at_ms: int
    sentiment: str
    sentiment_scores: dict[str, float]
    behaviours: list[str]
    behaviour_scores: dict[str, float]
    embedding: npt.NDArray[np.float32] | None
    truncated: bool
    # A multi-brand post's sentiment per brand, where its spans were classified; other brands take the post's.
    brand_sentiments: dict[str, Scored] = field(default_factory=dict)

    def sentiment_of(self, brand: str) -> str:
        own = self.brand_sentiments.get(brand)
        return self.sentiment if own is None else own.label


@dataclass(frozen=True, slots=True)
class Topics:
    sentiment: str
    behaviour: str
    dlq: str
    mentions: str


Record = tuple[str, str, bytes]

_partitioner = DefaultPartitioner()


# Brand keys repeat and stay cached; post ids never repeat and pass through, so a larger cache only holds
# ids that are not asked for again (a 30-minute soak grew by its 65,536 entries, 13 % of the RSS growth).
@lru_cache(maxsize=4_096)
def partition_of(key: bytes, partitions: tuple[int, ...]) -> int:
    """Where the default partitioner puts key (cached: brand keys repeat, and murmur2 is pure Python)."""
    partition: int = _partitioner(key, list(partitions), list(partitions))
    return partition


class Emitter:
    def __init__(self, producer: AIOKafkaProducer, topics: Topics, dlq_max_value_bytes: int = 1_000_000) -> None:
        self._producer = producer
        self._topics = topics
        self._dlq_max_value_bytes = dlq_max_value_bytes
        self._encoder = msgspec.json.Encoder()
        self._submitting: defaultdict[tuple[str, int], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def _send(self, topic: str, key: str, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        # send() resolves once the record is in the accumulator; the returned future resolves on the broker ack.
        delivery = await self._producer.send(topic, value=value, key=key.encode(), headers=headers)
        await delivery

    async def _send_batched(self, records: Iterable[Record]) -> None:
        """Send records as one record batch per (topic, partition); returns once Kafka acknowledged all."""
        partitions: dict[str, tuple[int, ...]] = {}
        builders: dict[tuple[str, int], Any] = {}
        deliveries: list[asyncio.Future[Any]] = []
        for topic, key, value in records:
            if topic not in partitions:
                partitions[topic] = tuple(sorted(await self._producer.partitions_for(topic)))
            key_bytes = key.encode()
            tp = (topic, partition_of(key_bytes, partitions[topic]))
            builder = builders.get(tp)
            if builder is None:
                builder = builders[tp] = self._producer.create_batch()
            if builder.append(key=key_bytes, value=value, timestamp=None) is None:
                # Full: submit it and start the next one (an empty batch takes any one record).
                deliveries.append(await self._submit(builder, tp))
                builder = builders[tp] = self._producer.create_batch()
                if builder.append(key=key_bytes, value=value, timestamp=None) is None:
                    raise ValueError(f"a {len(value)}-byte record does not fit an empty batch for {tp}")
        for tp, builder in builders.items():
            deliveries.append(await self._submit(builder, tp))
        await asyncio.gather(*deliveries)

    async def _submit(self, builder: Any, tp: tuple[str, int]) -> asyncio.Future[Any]:
        # Closed, the batch is ready at once instead of lingering for more records.
        builder.close()
        # One submitter per partition at a time: aiokafka's add_batch loops while the partition has a
        # pending batch and takes the whole elapsed time off its timeout on every pass, so many batches
        # queued on one partition (several emits in flight, a slow broker) timed out early
        # (KafkaTimeoutError with two workers on 2 cores). Queued on the lock, each finds at most one.
        async with self._submitting[tp]:
            delivery: asyncio.Future[Any] = await self._producer.send_batch(builder, tp[0], partition=tp[1])
        return delivery

    async def emit(self, posts: Sequence[Enriched]) -> dict[str, list[str]]:
        """Send every output of these posts and wait until Kafka acknowledged all of them.

        Returns the labels produced per topic, for metrics. Raises if any send failed: the caller
        must then not ack the inputs.
        """
        records: list[Record] = []
        labels: dict[str, list[str]] = {self._topics.sentiment: [], self._topics.behaviour: []}
        for enriched in posts:
            records.extend(self._records(enriched))
            labels[self._topics.sentiment].append(enriched.sentiment)
            labels[self._topics.behaviour].extend(enriched.behaviours or ["none"])
        await self._send_batched(records)
        return labels

    def _records(self, enriched: Enriched) -> list[Record]:
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
            "model": enriched.model,
            "timestamps": timestamps,
            "platform": post.platform,
            "author_id": post.author.id,
            "truncated": enriched.truncated,
        }
        sentiment = SentimentEvent(
            event_id=event_id(post.id, enriched.model.version, "sentiment"),
            label=enriched.sentiment,
            scores=enriched.sentiment_scores,
            **common,
        )
        behaviour = BehaviourEvent(
            event_id=event_id(post.id, enriched.model.version, "behaviour"),
            labels=enriched.behaviours,
            scores=enriched.behaviour_scores,
            **common,
        )
        records = [
            (self._topics.sentiment, key, self._encoder.encode(sentiment)),
            (self._topics.behaviour, key, self._encoder.encode(behaviour)),
        ]
        for brand in valid.brands:
            mention = build_mention(valid, brand, enriched, enriched.brand_sentiments.get(brand))
            records.append((self._topics.mentions, brand, self._encoder.encode(mention)))
        return records

    async def dead_letter(self, raw: bytes | None, reason: RejectReason, detail: str, source: SourceRef) -> None:
        letter = dead_letter_record(raw, reason, detail, source, self._dlq_max_value_bytes)
        await self._send(self._topics.dlq, letter.key, letter.value, letter.headers)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: str
    value: bytes
    headers: list[tuple[str, bytes]]


def dead_letter_record(
    raw: bytes | None, reason: RejectReason, detail: str, source: SourceRef, max_value_bytes: int
) -> DeadLetter:
    """The original bytes with why and where in headers; past `max_value_bytes`, a prefix of them.

    A record the input topic took can be larger than a producer may send (max_request_size); sent whole,
    its dead letter failed on every retry and stopped the worker. The original's length and sha256 always
    travel in headers, so a truncated letter still identifies its record.
    """
    original = raw or b""
    value = original[:max_value_bytes]
    headers = [
        ("socialpulse.reason", reason.value.encode()),
        ("socialpulse.detail", detail[:1000].encode("utf-8", "replace")),
        ("socialpulse.source.topic", source.topic.encode()),
        ("socialpulse.source.partition", str(source.partition).encode()),
        ("socialpulse.source.offset", str(source.offset).encode()),
        ("socialpulse.rejected_at", str(now_ms()).encode()),
        ("socialpulse.original.length", str(len(original)).encode()),
        ("socialpulse.original.sha256", hashlib.sha256(original).hexdigest().encode()),
        ("socialpulse.truncated", b"true" if len(value) < len(original) else b"false"),
    ]
    return DeadLetter(f"{source.topic}:{source.partition}:{source.offset}", value, headers)
