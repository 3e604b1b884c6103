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

Faust can also drop records it never handed to an agent: after a restore it seeks the partitions to their
committed offsets while records fetched before the seek are still being delivered, and then discards the
re-fetched records below its read offset, some undelivered among them. The sequencer sees the hole (an
offset skipped between two delivered records) and the consumer fetches the partition again from it;
nothing after the hole is handled until it comes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
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
    """Which input offsets may be committed: one past the longest prefix of done records, per partition.

    A jump between two delivered records is asked for again: Faust, seeking a partition while records
    fetched before the seek are still being delivered, drops records it never handed to the agent (it
    takes them as read). Committed past, or applied past (a brand state skips offsets it has applied),
    they would be lost. So the partition is fetched again from the first missing offset, and its records
    are not handled until that offset comes, or until the new fetch shows the broker has nothing there
    (transaction markers and compaction leave such holes)."""

    _pending: dict[TP, deque[_Pending]] = field(default_factory=dict)
    _committable: dict[TP, int] = field(default_factory=dict)
    _last_tracked: dict[TP, int] = field(default_factory=dict)
    # Partition -> the first offset it is being fetched again from, and where the broker's records resume
    # when it holds none there.
    _refetching: dict[TP, int] = field(default_factory=dict)
    _resumes_at: dict[TP, int] = field(default_factory=dict)
    topics: set[str] = field(default_factory=set)
    gap_free: set[str] = field(default_factory=set)
    # Set by the worker's consumer: fetch a partition again from an offset.
    refetch: Callable[[TP, int], None] | None = None

    def govern(self, topic: str, *, gap_free: bool = False) -> None:
        """Commits of `topic` follow this sequencer from now on (its agent must track every record). A
        `gap_free` topic is written only by our own non-transactional producers: a hole in it is records
        lost, reported as an error."""
        self.topics.add(topic)
        if gap_free:
            self.gap_free.add(topic)

    def track(self, tp: TP, offset: int) -> Callable[[], None] | None:
        """Register a delivered record; returns the callback that marks it done, or None when the agent
        must not handle it (its partition is being fetched again from an earlier offset)."""
        target = self._refetching.get(tp)
        if target is not None:
            if offset not in (target, self._resumes_at.get(tp)):
                return None
            del self._refetching[tp]
            if self._resumes_at.pop(tp, None) == offset != target:
                level = logging.ERROR if tp.topic in self.gap_free else logging.WARNING
                log.log(
                    level, "%s[%d]: the broker holds no records at %d-%d", tp.topic, tp.partition, target, offset - 1
                )
        else:
            last = self._last_tracked.get(tp)
            if last is not None and offset > last + 1:
                first, end = last + 1, offset - 1
                log.warning("%s[%d]: offsets %d-%d were not delivered to the agent", tp.topic, tp.partition, first, end)
                if self.refetch is not None:
                    self._refetching[tp] = last + 1
                    self.refetch(tp, last + 1)
                    return None
        queue = self._pending.setdefault(tp, deque())
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

    def resumes_at(self, tp: TP, offset: int) -> None:
        """The fetch from the offset `tp` is fetched again from starts at `offset`, beyond it: the broker
        has no records in between."""
        if tp in self._refetching:
            self._resumes_at[tp] = offset

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
            self._refetching.pop(tp, None)
            self._resumes_at.pop(tp, None)


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
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Partition -> the offset the sequencer asked for again; seeks asked for and done per partition,
            # and the seeks done when the records in hand began to be fetched.
            self._refetch_from: dict[TP, int] = {}
            self._seeks_asked: Counter[TP] = Counter()
            self._seeks_done: Counter[TP] = Counter()
            self._fetch_began_after: Counter[TP] = Counter()
            self._seeking: set[asyncio.Task[None]] = set()
            sequencer.refetch = self.refetch

        def refetch(self, tp: TP, offset: int) -> None:
            self._refetch_from[tp] = offset
            self._seek_again(tp)

        def _seek_again(self, tp: TP) -> None:
            self._seeks_asked[tp] += 1
            task = asyncio.ensure_future(self._seek_to_refetch(tp))
            self._seeking.add(task)
            task.add_done_callback(self._seeking.discard)

        async def _seek_to_refetch(self, tp: TP) -> None:
            offset = self._refetch_from.get(tp)
            if offset is not None:
                await self.seek(tp, offset)
            self._seeks_done[tp] += 1

        async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
            began_after = self._seeks_done.copy()
            fetched = await super()._wait_next_records(timeout)
            self._fetch_began_after = began_after
            return fetched

        async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
            seeked_again: set[TP] = set()
            async for tp, message in super().getmany(timeout):
                offset = self._refetch_from.get(tp)
                if offset is not None:
                    if message.offset != offset:
                        if self._fetch_began_after[tp] < self._seeks_asked[tp]:
                            # This fetch may have begun before the seek, or overtaken it: skipped, and fetched
                            # again by one more seek.
                            if tp not in seeked_again:
                                seeked_again.add(tp)
                                self._seek_again(tp)
                            continue
                        # Fetched from the offset asked for, and the broker's records resume later.
                        sequencer.resumes_at(tp, message.offset)
                    del self._refetch_from[tp]
                    # Records fetched before the seek may have moved Faust's read offset past this one,
                    # and Faust drops a record below its read offset as read.
                    self._read_offset[tp] = None
                yield tp, message

        def _forget_refetches(self, tps: set[TP]) -> None:
            for tp in tps:
                self._refetch_from.pop(tp, None)

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
            self._forget_refetches(revoked)

        async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
            # Faust seeks every assigned partition back to its committed offset.
            sequencer.forget(assigned)
            self._forget_refetches(assigned)
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
            if done is None:
                await manual.ack(event)
                continue

            async def ack(event: Any = event, done: Callable[[], None] = done) -> None:
                done()
                await manual.ack(event)

            source = SourceRef(message.topic, message.partition, message.offset)
            await pipeline.submit(message.value, source, ack=ack)

    return app.agent(topic, name="socialpulse.ingest")(ingest)
