"""Ingest stage: the Faust agent on the input topic, and the rule that decides which offsets are committed.

Faust's own commit rule is unsafe for a consumer that must not lose records. `take()` acks its buffer
when the agent is cancelled, and `Consumer._new_offset` lets a commit jump a hole: with no committed
offset yet it commits the first run of acked offsets wherever it starts, and with one it tolerates a gap
of exactly one message. Batches sorted by length complete out of offset order, so either would commit a
post whose outputs were never produced, and a crash would lose it. Faust also acks, by itself, records
its stream skips during a rebalance (flow stopped, or a message of an older generation).

So the streams are `noack()`, and commits come from an `OffsetSequencer`: per partition, the records in
delivery order; a record is done when every output produced from it (and every state write it made) is
acknowledged by Kafka, and the committable offset is one past the longest done prefix. Faust's consumer
is subclassed to ask the sequencer instead of its own ack lists for the topics the sequencer governs: the
input topic (ingest) and the mentions topic (the brand monitor). Other topics keep Faust's rule.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from faust.exceptions import ProducerSendError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from stream.pipeline import Pipeline
from stream.settings import Settings
from stream.validate import SourceRef

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    offset: int
    done: bool = False


@dataclass(slots=True)
class OffsetSequencer:
    """Which input offsets may be committed: one past the longest prefix of done records, per partition."""

    _pending: dict[TP, deque[_Pending]] = field(default_factory=dict)
    _committable: dict[TP, int] = field(default_factory=dict)
    _last_tracked: dict[TP, int] = field(default_factory=dict)
    topics: set[str] = field(default_factory=set)

    def govern(self, topic: str) -> None:
        """Commits of `topic` follow this sequencer from now on (its agent must track every record)."""
        self.topics.add(topic)

    def track(self, tp: TP, offset: int) -> Callable[[], None]:
        """Register a delivered record; returns the callback that marks it done."""
        queue = self._pending.setdefault(tp, deque())
        last = self._last_tracked.get(tp)
        if last is not None and offset > last + 1:
            # Not a loss by itself (a transactional producer's markers and compaction leave gaps), but a
            # record the agent never received here is committed with the prefix around it: say so.
            log.warning(
                "%s[%d]: offsets %d-%d were not delivered to the agent", tp.topic, tp.partition, last + 1, offset - 1
            )
        self._last_tracked[tp] = offset
        if queue and offset <= queue[-1].offset:
            # A rewind (seek to the committed offset after a rebalance): everything pending from the old
            # position will be delivered again, so it must not count towards commits any more.
            queue.clear()
        entry = _Pending(offset)
        queue.append(entry)

        def done() -> None:
            entry.done = True
            self._advance(tp)

        return done

    def _advance(self, tp: TP) -> None:
        queue = self._pending.get(tp)
        while queue and queue[0].done:
            self._committable[tp] = queue.popleft().offset + 1

    def committable(self, tp: TP) -> int | None:
        return self._committable.get(tp)

    def forget(self, tps: set[TP]) -> None:
        """Partitions revoked or reassigned: records still in flight for them no longer move commits."""
        for tp in tps:
            self._pending.pop(tp, None)
            self._committable.pop(tp, None)
            self._last_tracked.pop(tp, None)


# How long a commit waits for Faust's producer buffer to empty before it gives up (and the worker stops).
BUFFER_DRAIN_TIMEOUT_S = 60.0


class DrainingProducerBuffer(ProducerBuffer):
    """Faust's producer buffer, whose flush empties it.

    Faust flushes its producer before it commits offsets, but `ProducerBuffer.flush` returns as soon as
    0.1 s pass without a buffered record being sent, records still waiting. Table changelog writes go
    through this buffer, so the brand monitor's offsets were committed past state writes still in memory,
    and a worker killed then restarted with less state than it had committed (the kill-and-restart test
    failed now and then, with "producer buffer full" in the log).
    """

    async def flush(self) -> None:
        deadline = time.monotonic() + BUFFER_DRAIN_TIMEOUT_S
        while self.size:
            if time.monotonic() > deadline:
                raise ProducerSendError(f"{self.size} buffered records not sent within {BUFFER_DRAIN_TIMEOUT_S:.0f} s")
            await self.flush_atmost(None)


class DrainingProducer(faust_aiokafka.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer = DrainingProducerBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.app
        if getattr(self, "threaded_producer", None) is not None:
            buffer.threaded_producer = self.threaded_producer
        self.buffer = buffer


def worker_transport(app: faust.App, sequencer: OffsetSequencer) -> faust_aiokafka.Transport:
    """Faust's aiokafka transport with a producer whose flush drains, and the commits of the topics
    `sequencer` governs decided by it (every other topic keeps Faust's rule)."""

    class SequencedConsumer(faust_aiokafka.Consumer):
        def _new_offset(self, tp: TP) -> int | None:
            if tp.topic not in sequencer.topics:
                # The sequencer tracks no other topic: answering for one would never commit it, and every
                # restart would re-read it from the start of its retention.
                return super()._new_offset(tp)
            # Faust's ack lists are still fed (sensors, unacked tracking) but no longer decide; drop them
            # so they do not grow.
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            return sequencer.committable(tp)

        async def on_partitions_revoked(self, revoked: set[TP]) -> None:
            # Faust waits here for the records in hand to be acked and commits as they are, while the
            # partitions are still ours; forgotten first, that finished work was left to the next owner.
            await super().on_partitions_revoked(revoked)
            sequencer.forget(revoked)

        async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
            # Faust seeks every assigned partition back to its committed offset.
            sequencer.forget(assigned)
            await super().on_partitions_assigned(assigned, generation_id)

    class SequencedTransport(faust_aiokafka.Transport):
        Consumer = SequencedConsumer
        Producer = DrainingProducer

    transport = SequencedTransport(app.conf.broker_consumer, app)
    transport.sequencer = sequencer  # type: ignore[attr-defined]
    return transport


def commit_sequencer(app: faust.App) -> OffsetSequencer:
    """The sequencer of the app's transport (installed by create_app), for an agent to register its topic."""
    sequencer = getattr(app.transport, "sequencer", None)
    if not isinstance(sequencer, OffsetSequencer):
        raise RuntimeError("the app's transport does not sequence commits: build the app with create_app")
    return sequencer


def register_ingest(app: faust.App, settings: Settings, pipeline_ready: Callable[[], Awaitable[Pipeline]]) -> Any:
    sequencer = commit_sequencer(app)
    sequencer.govern(settings.input_topic)
    topic = app.topic(
        settings.input_topic,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )

    async def ingest(stream: faust.StreamT[bytes]) -> None:
        pipeline = await pipeline_ready()
        # noack() lives on the Stream implementation, not on the StreamT interface.
        manual = cast(faust.Stream[bytes], stream).noack()
        async for event in manual.events():
            message = event.message
            done = sequencer.track(message.tp, message.offset)

            async def ack(event: Any = event, done: Callable[[], None] = done) -> None:
                done()
                await manual.ack(event)

            source = SourceRef(message.topic, message.partition, message.offset)
            await pipeline.submit(message.value, source, ack=ack)

    return app.agent(topic, name="socialpulse.ingest")(ingest)
