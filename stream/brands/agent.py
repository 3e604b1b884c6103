"""The streaming side of brand monitoring: a Faust agent running BrandMonitor with its state in tables.

- Input: settings.mentions_topic (one BrandMention per (post, brand), keyed by brand, msgspec JSON).
- State: three changelogged tables with the source topic's partition count, changed only while processing a
  record of the partition that owns the key, and each change sent to that record's changelog partition, so a
  restarted or rebalanced worker restores exactly its partitions' state (changes reach the tables when an
  offset commit begins, see StructTable):
  `brand-monitor-state` (brand -> BrandState), `brand-monitor-authors` ("brand\\x1fauthor" -> AuthorState),
  `brand-monitor-stories` (brand -> StoryState) and `brand-monitor-partitions` ("p<n>" -> brands keyed to
  partition n).
- Output: BrandStats and FlaggedMention to settings.brand_stats_topic; Alert and AuthorEscalation to
  settings.alerts_topic; StoryUpdate to settings.stories_topic; alerts also to an Alertmanager webhook when
  one is configured.
- Share of voice (with competitor sets, stream/brands/share.py): closing windows of a set's member also
  sends a ShareContribution to settings.share_topic, keyed by set; a second agent reads that topic into
  `brand-share-state` (set -> ShareState) and sends ShareOfVoice to settings.brand_stats_topic. Its records
  are handled, flushed and committed by the same rules as the mentions.

Watermark rule (per partition): event time is the largest created_at seen on the partition; a window closes
when that passes its end + allowed lateness. So that windows also close when posts stop, a timer writes a
tick record into each partition this worker owns every `tick_s`; a tick on an idle partition (no mention for
`idle_s` of wall-clock time) advances the partition's event time by the wall time since its last mention.
Ticks travel through the topic, so they are ordered with the mentions and table writes stay in the right
partition. Processing is at-least-once and counts each post once: a record replayed after a restore is
recognised by its offset, a post the pipeline emitted twice by its author's history (BrandMonitor.observe);
an output may be sent twice, and carries a stable id (alert_id; brand + window for stats).

Commits (the pipeline's rule, stream/ingest.py): the stream is `noack()` and the mentions topic's offsets
come from the commit sequencer. A record is done once its outputs and then the table flush that holds its
state writes are acknowledged by Kafka (outputs first: a replay skips what a restored state holds); a send
that fails stops the worker with nothing committed past it. A record the monitor cannot handle goes to the
dead-letter topic (`invalid_mention`, `internal_error`), and its partition's state is rolled back to the
last flush and the records since replayed, so no half-made
change of the failed record is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import faust
import msgspec
from faust.types import TP

from stream.brands.model import (
    Alert,
    AuthorEscalation,
    AuthorState,
    BrandState,
    BrandStats,
    Output,
    ShareContribution,
    ShareOfVoice,
    ShareState,
    StoryUpdate,
)
from stream.brands.monitor import BrandMonitor, MonitorConfig
from stream.brands.share import CompetitorSets, ShareAggregator, contributions
from stream.brands.stories import StoryConfig, StoryState, StoryTracker
from stream.brands.webhook import AlertmanagerWebhook, WebhookError
from stream.emit import dead_letter_record
from stream.ingest import commit_sequencer
from stream.schema import BrandMention, RejectReason
from stream.settings import Settings
from stream.validate import SourceRef

log = logging.getLogger(__name__)

TICK_KEY = b"\x00socialpulse.tick"
T = TypeVar("T")
Emitted = Output | ShareContribution


class Tick(msgspec.Struct, frozen=True):
    wall_ms: int


class StructTable(MutableMapping[str, T], Generic[T]):
    """A Faust table of msgspec-JSON bytes seen as a mapping of str -> struct, written behind.

    Writes wait here, each with the partition of the record that made it, until `flush()` hands the last
    value of every waiting key to the Faust table and its changelog. A brand's state is up to a few hundred kB
    of JSON once its windows and dedupe memory fill; written through on every mention, the changelog took 9 GB
    over a few demo runs and Faust's producer buffer backed the whole worker up (demo e2e p50 ~1.6 s).
    `CommitFlush` stages as each offset commit begins (Kafka Streams' state-store cache does the same); the
    staged writes go to the changelog once the outputs of the records they hold are acknowledged.
    """

    def __init__(self, table: Any, type_: type[T]) -> None:
        self._table = table
        self._decoder = msgspec.json.Decoder(type_)
        self._encoder = msgspec.json.Encoder()
        # key -> (bytes the table held, their struct). Decoding a brand's state on every read took most of
        # the event loop (py-spy, demo at 100 posts/s). A hit needs the table to still hold the very same
        # bytes object, so values restored from the changelog are decoded afresh. A hit returns the struct
        # last written, as a plain dict of structs would (what the backtest runs the monitor on).
        self._decoded: dict[str, tuple[bytes, T]] = {}
        # key -> (partition of the record that wrote it, value; None: deleted), not yet in the table.
        self._unflushed: dict[str, tuple[int, T | None]] = {}

    def __getitem__(self, key: str) -> T:
        if key in self._unflushed:
            value = self._unflushed[key][1]
            if value is None:
                raise KeyError(key)
            return value
        raw = self._table.get(key.encode())
        if raw is None:
            self._decoded.pop(key, None)
            raise KeyError(key)
        cached = self._decoded.get(key)
        if cached is not None and cached[0] is raw:
            return cached[1]
        value = self._decoder.decode(raw)
        self._decoded[key] = (raw, value)
        return value

    def __setitem__(self, key: str, value: T) -> None:
        self._unflushed[key] = (_current_partition(), value)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._unflushed[key] = (_current_partition(), None)

    def __iter__(self) -> Iterator[str]:
        keys = dict.fromkeys(key.decode() for key in list(self._table.keys()))
        for key, (_, value) in self._unflushed.items():
            if value is None:
                keys.pop(key, None)
            else:
                keys[key] = None
        return iter(list(keys))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def stage(self) -> list[tuple[int, bytes, bytes | None]]:
        """Store every waiting write in the table (reads see it from now on) and return them as (partition of
        the record that made it, key, bytes; None: deleted) for `send`."""
        unflushed, self._unflushed = self._unflushed, {}
        staged: list[tuple[int, bytes, bytes | None]] = []
        for key, (partition, value) in unflushed.items():
            stored = key.encode()
            if value is None:
                self._decoded.pop(key, None)
                self._table.data.pop(stored, None)
                staged.append((partition, stored, None))
            else:
                raw = self._encoder.encode(value)
                self._table.data[stored] = raw
                self._decoded[key] = (raw, value)
                staged.append((partition, stored, raw))
        return staged

    def send(self, staged: list[tuple[int, bytes, bytes | None]]) -> list[Awaitable[Any]]:
        """Send staged writes to the changelog partition of the record that made each (what Faust's own table
        writes use, so recovery restores each key with its partition); the sends resolve when Kafka acks."""
        return [
            self._table.send_changelog(partition, key, raw, value_serializer="raw")
            if raw is None
            else self._table.send_changelog(partition, key, raw)
            for partition, key, raw in staged
        ]

    def discard(self, partitions: set[int]) -> None:
        """Forget the waiting writes of `partitions`: back to what the last flush stored.

        The monitor changes the structs it reads in place, the decoded cache's too, so the cache goes as
        well and every key is decoded afresh from the stored bytes."""
        for key in [k for k, (p, _) in self._unflushed.items() if p in partitions]:
            del self._unflushed[key]
        self._decoded.clear()


class CommitFlush(faust.Sensor):
    """Flushes the brand tables as each offset commit begins (the records it settles count at the next)."""

    def __init__(self, flush: Callable[[], None]) -> None:
        super().__init__()
        self._flush = flush

    def on_commit_initiated(self, consumer: Any) -> None:
        self._flush()


def _current_partition() -> int:
    event = faust.current_event()
    if event is None:
        raise RuntimeError("brand state can only change while the agent handles a record")
    return int(event.message.partition)


@dataclass(slots=True)
class Handled:
    """A record handled since the last flush; settled (done, acked) once `sends` and that flush are acknowledged."""

    event: Any
    done: Callable[[], None]
    # Resolves once every output is handed to the producer (`sends` complete).
    emitted: asyncio.Future[None]
    sends: list[Awaitable[Any]] = field(default_factory=list)
    # The record's bytes while its state changes may have to be replayed; None for a dead-lettered one.
    replay: bytes | None = None


class BrandAgents:
    """What register_brand_agents wired: the monitor (over the tables) and the per-partition clocks."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        config: MonitorConfig,
        story_config: StoryConfig,
        webhook: AlertmanagerWebhook | None,
        idle_s: float,
        on_alert: Callable[[Alert], None] | None = None,
        on_stats: Callable[[BrandStats], None] | None = None,
        sets: CompetitorSets | None = None,
        on_share: Callable[[ShareOfVoice], None] | None = None,
    ) -> None:
        partitions = settings.topic_partitions
        self.app = app
        self.idle_ms = int(idle_s * 1000)
        self.mentions = app.topic(settings.mentions_topic, key_type=bytes, value_type=bytes, partitions=partitions)
        self.sequencer = commit_sequencer(app)
        self.sequencer.govern(settings.mentions_topic, gap_free=True)
        self.dead_letters = app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes)
        self.dlq_max_value_bytes = settings.dlq_max_value_bytes
        self.stats_topic = app.topic(settings.brand_stats_topic, key_type=bytes, value_type=bytes)
        self.alerts_topic = app.topic(settings.alerts_topic, key_type=bytes, value_type=bytes)
        self.stories_topic = app.topic(settings.stories_topic, key_type=bytes, value_type=bytes)
        self.brand_table = app.Table("brand-monitor-state", key_type=bytes, value_type=bytes, partitions=partitions)
        self.author_table = app.Table("brand-monitor-authors", key_type=bytes, value_type=bytes, partitions=partitions)
        self.story_table = app.Table("brand-monitor-stories", key_type=bytes, value_type=bytes, partitions=partitions)
        self.index_table = app.Table(
            "brand-monitor-partitions", key_type=bytes, value_type=bytes, partitions=partitions
        )
        states = StructTable(self.brand_table, BrandState)
        authors = StructTable(self.author_table, AuthorState)
        stories = StructTable(self.story_table, StoryState)
        self.monitor = BrandMonitor(config, states, authors, StoryTracker(config.window_s, story_config, stories))
        self.index: StructTable[list[str]] = StructTable(self.index_table, list[str])
        # Flushed in this order: a brand's state marks its records applied, so a replayed one is skipped; the
        # author histories they updated go first (they skip a post they hold, and a post held with the same
        # offset is still counted by its brand), else a worker killed between the two would restart with the
        # record applied and missing from its author's history. Stories keep their own applied offset and
        # skip what they hold, so they go before the states for the same reason.
        mention_tables: tuple[StructTable[Any], ...] = (authors, stories, self.index, states)
        # topic -> the tables its records change, in flush order.
        self.tables: dict[str, tuple[StructTable[Any], ...]] = {settings.mentions_topic: mention_tables}
        self.sets = sets or CompetitorSets()
        self.share_topic = app.topic(settings.share_topic, key_type=bytes, value_type=bytes, partitions=partitions)
        self.share: ShareAggregator | None = None
        if self.sets:
            self.sequencer.govern(settings.share_topic, gap_free=True)
            self.share_table = app.Table("brand-share-state", key_type=bytes, value_type=bytes, partitions=partitions)
            share_states = StructTable(self.share_table, ShareState)
            self.share = ShareAggregator(
                self.sets, config.window_s, config.share_wait_windows, config.share_max_pending_windows, share_states
            )
            self.tables[settings.share_topic] = (share_states,)
        self.webhook = webhook
        self.webhook_queue: asyncio.Queue[Alert] | None = None
        self.on_alert = on_alert
        self.on_stats = on_stats
        self.on_share = on_share
        # partition -> (event time, wall ms when it was last raised by a mention); in memory only.
        self._clocks: dict[int, tuple[int, int]] = {}
        self._due: dict[int, int | None] = {}
        # The clocks as the last flush left them, and the records handled since, per source partition.
        self._flushed_clocks: tuple[dict[int, tuple[int, int]], dict[int, int | None]] = ({}, {})
        self._handled: dict[TP, list[Handled]] = {}
        self._settling: set[asyncio.Future[None]] = set()
        self._last_settle: asyncio.Future[None] | None = None
        # topic -> the agent's noack stream of it, which acks its records.
        self.streams: dict[str, Any] = {}
        self._encoder = msgspec.json.Encoder()
        self._mention_decoder = msgspec.json.Decoder(BrandMention)
        self._tick_decoder = msgspec.json.Decoder(Tick)
        self._share_decoder = msgspec.json.Decoder(ShareContribution)

    def _brands(self, partition: int) -> list[str]:
        return self.index.get(f"p{partition}") or []

    def _advance(self, partition: int, now_ms: int) -> list[Emitted]:
        due = self._due.get(partition)
        if due is not None and now_ms < due:
            return []
        brands = self._brands(partition)
        members = [b for b in brands if self.sets.of(b)]
        before = self._closed_until(members)
        closed = self.monitor.advance(now_ms, brands)
        outputs: list[Emitted] = [*closed, *contributions(self.sets, before, self._closed_until(members), closed)]
        dues = [d for d in (self.monitor.next_close_ms(b) for b in brands) if d is not None]
        self._due[partition] = min(dues) if dues else None
        return outputs

    def _closed_until(self, brands: list[str]) -> dict[str, int]:
        states = ((b, self.monitor.brands.get(b)) for b in brands)
        return {b: state.closed_until for b, state in states if state is not None}

    def on_mention(self, partition: int, offset: int, raw: bytes) -> list[Emitted]:
        mention = self._mention_decoder.decode(raw)
        clock = self._clocks.get(partition, (0, 0))
        if mention.created_at > clock[0]:
            self._clocks[partition] = (mention.created_at, _wall_ms())
        outputs = self._advance(partition, max(clock[0], mention.created_at))
        brands = self._brands(partition)
        if mention.brand not in brands:
            self.index[f"p{partition}"] = [*brands, mention.brand]
        outputs.extend(self.monitor.observe(mention, offset))
        due = self.monitor.next_close_ms(mention.brand)
        current = self._due.get(partition)
        if due is not None and (current is None or due < current):
            self._due[partition] = due
        return outputs

    def on_tick(self, partition: int, raw: bytes) -> list[Emitted]:
        wall = self._tick_decoder.decode(raw).wall_ms
        clock = self._clocks.get(partition)
        if clock is None:
            # Fresh start: resume from the restored state's event time, extrapolating from now on.
            states = (self.monitor.brands.get(b) for b in self._brands(partition))
            latest = max((s.max_event_ms for s in states if s is not None), default=0)
            if not latest:
                return []
            clock = self._clocks[partition] = (latest, wall)
        event_ms, seen_wall = clock
        idle = wall - seen_wall
        return self._advance(partition, event_ms + idle) if idle >= self.idle_ms else []

    def apply(self, message: Any, raw: bytes) -> list[Emitted]:
        if message.topic == self.share_topic.get_topic_name():
            assert self.share is not None, "the share agent runs only with competitor sets"
            return [*self.share.add(self._share_decoder.decode(raw))]
        if message.key == TICK_KEY:
            return self.on_tick(message.partition, raw)
        return self.on_mention(message.partition, message.offset, raw)

    async def handle(self, event: Any) -> None:
        """Apply one record (mentions or share topic) and send its outputs; its commit waits for them and its
        flush."""
        message = event.message
        partition = message.partition
        done = self.sequencer.track(message.tp, message.offset)
        if done is None:
            # Records before it are being fetched again: applied now, it would mark them applied.
            await self.streams[message.topic].ack(event)
            return
        handled = Handled(event, done, asyncio.get_running_loop().create_future())
        # Registered before anything can yield: a commit that begins while the outputs are being sent stages
        # this record's state, so that flush must hold the record too and wait for its outputs.
        self._handled.setdefault(message.tp, []).append(handled)
        try:
            outputs = self.apply(message, event.value)
        except Exception as error:
            undecodable = isinstance(error, msgspec.DecodeError)
            reason = RejectReason.INVALID_MENTION if undecodable else RejectReason.INTERNAL_ERROR
            source = SourceRef(message.topic, partition, message.offset)
            log.error("brand monitor: %s at %s[%d]@%d: %r", reason.value, source.topic, partition, source.offset, error)
            if not undecodable:  # a record is decoded before it changes anything
                self._roll_back(message.tp)
            letter = dead_letter_record(event.value, reason, repr(error), source, self.dlq_max_value_bytes)
            handled.sends = [
                await self.dead_letters.send(key=letter.key.encode(), value=letter.value, headers=letter.headers)
            ]
            handled.emitted.set_result(None)
            return
        handled.replay = event.value
        try:
            handled.sends = await self.emit(outputs)
        except Exception as error:
            # The record's state may already be staged: it cannot be undone, and it must not be committed.
            log.error("brand monitor: an output could not be handed to the producer, stopping: %r", error)
            handled.emitted.set_exception(error)
            await self.app.crash(error)
            return
        handled.emitted.set_result(None)

    def _roll_back(self, tp: TP) -> None:
        """Undo what the failed record changed: its partition's state back to the last flush, then the records
        handled since applied again (their outputs are already sent)."""
        for table in self.tables.get(tp.topic, ()):
            table.discard({tp.partition})
        if tp.topic == self.mentions.get_topic_name():
            clocks, dues = self._flushed_clocks
            self._clocks.pop(tp.partition, None)
            self._due.pop(tp.partition, None)
            if tp.partition in clocks:
                self._clocks[tp.partition] = clocks[tp.partition]
            if tp.partition in dues:
                self._due[tp.partition] = dues[tp.partition]
        for handled in self._handled.get(tp, []):
            if handled.replay is not None:
                self.apply(handled.event.message, handled.replay)

    def flush(self) -> None:
        """Stage every waiting state write; the records handled so far settle once their outputs and then those
        writes are acknowledged."""
        staged = [(table, table.stage()) for tables in self.tables.values() for table in tables]
        handled = [h for records in self._handled.values() for h in records]
        self._handled = {}
        self._flushed_clocks = (dict(self._clocks), dict(self._due))
        if handled or any(writes for _, writes in staged):
            task = asyncio.ensure_future(self._settle(handled, staged, self._last_settle))
            self._last_settle = task
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle(
        self,
        handled: list[Handled],
        staged: list[tuple[StructTable[Any], list[tuple[int, bytes, bytes | None]]]],
        previous: asyncio.Future[None] | None,
    ) -> None:
        try:
            if previous is not None:
                # A key's writes must reach its changelog in the order they were made.
                await previous
            await asyncio.gather(*(h.emitted for h in handled))
            # Outputs before state: a replay skips the records a restored state holds (applied offsets), so
            # their outputs must be in Kafka before that state is.
            await asyncio.gather(*(send for h in handled for send in h.sends))
            await asyncio.gather(*(send for table, writes in staged for send in table.send(writes)))
        except Exception as error:
            # Acking now would commit records whose state or outputs Kafka does not have.
            log.error("brand monitor: a state write or output was not acknowledged, stopping: %r", error)
            await self.app.crash(error)
            return
        for h in handled:
            h.done()
            await self.streams[h.event.message.topic].ack(h.event)

    def on_revoked(self, revoked: set[TP]) -> None:
        """Lost partitions: what their records changed and no commit flushed is the next owner's to redo."""
        for topic, tables in self.tables.items():
            partitions = {tp.partition for tp in revoked if tp.topic == topic}
            for table in tables:
                table.discard(partitions)
        for tp in revoked:
            self._handled.pop(tp, None)
            if tp.topic == self.mentions.get_topic_name():
                self._clocks.pop(tp.partition, None)
                self._due.pop(tp.partition, None)

    async def emit(self, outputs: list[Emitted]) -> list[Awaitable[Any]]:
        """Send the outputs; returns their deliveries, which resolve when Kafka acknowledges them."""
        sends: list[Awaitable[Any]] = []
        for output in outputs:
            key = (
                output.competitor_set if isinstance(output, ShareContribution | ShareOfVoice) else output.brand
            ).encode()
            value = self._encoder.encode(output)
            if isinstance(output, ShareContribution):
                sends.append(await self.share_topic.send(key=key, value=value))
            elif isinstance(output, Alert | AuthorEscalation):
                sends.append(await self.alerts_topic.send(key=key, value=value))
                if isinstance(output, Alert):
                    if self.webhook_queue is not None:
                        self.webhook_queue.put_nowait(output)
                    if self.on_alert is not None:
                        self.on_alert(output)
            elif isinstance(output, StoryUpdate):
                sends.append(await self.stories_topic.send(key=key, value=value))
            else:
                sends.append(await self.stats_topic.send(key=key, value=value))
                if isinstance(output, BrandStats) and self.on_stats is not None:
                    self.on_stats(output)
                if isinstance(output, ShareOfVoice) and self.on_share is not None:
                    self.on_share(output)
        return sends

    async def send_ticks(self) -> None:
        tick = self._encoder.encode(Tick(_wall_ms()))
        for tp in sorted(self.app.assignor.assigned_actives()):
            if tp.topic == self.mentions.get_topic_name():
                await self.mentions.send(key=TICK_KEY, value=tick, partition=tp.partition)

    async def deliver_webhooks(self) -> None:
        assert self.webhook is not None
        self.webhook_queue = asyncio.Queue()
        try:
            while True:
                alert = await self.webhook_queue.get()
                try:
                    await self.webhook.send([alert])
                except WebhookError as error:
                    log.error("alert %s (%s) not delivered: %s", alert.alert_id, alert.status, error)
        finally:
            await self.webhook.close()


def _wall_ms() -> int:
    return int(time.time() * 1000)


def register_brand_agents(
    app: faust.App,
    settings: Settings,
    config: MonitorConfig | None = None,
    story_config: StoryConfig | None = None,
    *,
    webhook_url: str | None = None,
    tick_s: float = 5.0,
    idle_s: float = 10.0,
    on_alert: Callable[[Alert], None] | None = None,
    on_stats: Callable[[BrandStats], None] | None = None,
    sets: CompetitorSets | None = None,
    on_share: Callable[[ShareOfVoice], None] | None = None,
) -> BrandAgents:
    """Add the brand monitor agent, its tables, the tick timer and (with a webhook URL) the delivery task, and
    with competitor `sets` the share-of-voice agent. `on_alert`, `on_stats` and `on_share` see each alert,
    window stat and share record as it is sent (the live page's panels, the share gauge)."""
    webhook = AlertmanagerWebhook(webhook_url) if webhook_url else None
    agents = BrandAgents(
        app,
        settings,
        config or MonitorConfig(),
        story_config or StoryConfig(),
        webhook,
        idle_s,
        on_alert,
        on_stats,
        sets,
        on_share,
    )

    async def handle(topic: faust.TopicT, stream: faust.StreamT[bytes]) -> None:
        # noack() lives on the Stream implementation, not on the StreamT interface.
        noack = agents.streams[topic.get_topic_name()] = cast(faust.Stream[bytes], stream).noack()
        async for event in noack.events():
            await agents.handle(event)

    @app.agent(agents.mentions, name="socialpulse-brand-monitor")
    async def monitor_mentions(stream: faust.StreamT[bytes]) -> None:
        await handle(agents.mentions, stream)

    if agents.share is not None:

        @app.agent(agents.share_topic, name="socialpulse-share-of-voice")
        async def share_of_voice(stream: faust.StreamT[bytes]) -> None:
            await handle(agents.share_topic, stream)

    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        agents.on_revoked(args[0])

    app.on_partitions_revoked.connect(on_revoked)
    app.sensors.add(CommitFlush(agents.flush))

    # Called, not used as a decorator: Faust's timer is untyped.
    app.timer(tick_s, name="socialpulse-brand-ticks")(agents.send_ticks)

    if webhook is not None:
        app.task(agents.deliver_webhooks)

    return agents
