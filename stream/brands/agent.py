"""The streaming side of brand monitoring: a Faust agent running BrandMonitor with its state in tables.

- Input: settings.mentions_topic (one BrandMention per (post, brand), keyed by brand, msgspec JSON).
- State: three changelogged tables with the source topic's partition count, changed only while processing a
  record of the partition that owns the key, and each change sent to that record's changelog partition, so a
  restarted or rebalanced worker restores exactly its partitions' state (changes reach the tables when an
  offset commit begins, see StructTable):
  `brand-monitor-state` (brand -> BrandState), `brand-monitor-authors` ("brand\\x1fauthor" -> AuthorState) and
  `brand-monitor-partitions` ("p<n>" -> brands keyed to partition n).
- Output: BrandStats and FlaggedMention to settings.brand_stats_topic; Alert and AuthorEscalation to
  settings.alerts_topic; alerts also to an Alertmanager webhook when one is configured.

Watermark rule (per partition): event time is the largest created_at seen on the partition; a window closes
when that passes its end + allowed lateness. So that windows also close when posts stop, a timer writes a
tick record into each partition this worker owns every `tick_s`; a tick on an idle partition (no mention for
`idle_s` of wall-clock time) advances the partition's event time by the wall time since its last mention.
Ticks travel through the topic, so they are ordered with the mentions and table writes stay in the right
partition. Processing is at-least-once: a mention redelivered after a crash is recognised by post id and not
counted twice; an output may be sent twice, and carries a stable id (alert_id; brand + window for stats).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any, Generic, TypeVar

import faust
import msgspec
from faust.types import TP

from stream.brands.model import Alert, AuthorEscalation, AuthorState, BrandState, Output
from stream.brands.monitor import BrandMonitor, MonitorConfig
from stream.brands.webhook import AlertmanagerWebhook, WebhookError
from stream.schema import BrandMention
from stream.settings import Settings

log = logging.getLogger(__name__)

TICK_KEY = b"\x00socialpulse.tick"
T = TypeVar("T")


class Tick(msgspec.Struct, frozen=True):
    wall_ms: int


class StructTable(MutableMapping[str, T], Generic[T]):
    """A Faust table of msgspec-JSON bytes seen as a mapping of str -> struct, written behind.

    Writes wait here, each with the partition of the record that made it, until `flush()` hands the last
    value of every waiting key to the Faust table and its changelog. A brand's state is 100-190 kB of JSON
    once its windows and dedupe memory fill; written through on every mention, the changelog took 9 GB
    over a few demo runs and Faust's producer buffer backed the whole worker up (demo e2e p50 ~1.6 s).
    `CommitFlush` flushes as each offset commit begins: Faust then flushes its producer before it
    commits, so no committed record's state is left behind (Kafka Streams' state-store cache does the same).
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

    def flush(self) -> None:
        """Store every waiting write and send it to the changelog partition of the record that made it (what
        Faust's own table writes use, so recovery restores each key with its partition)."""
        unflushed, self._unflushed = self._unflushed, {}
        for key, (partition, value) in unflushed.items():
            stored = key.encode()
            if value is None:
                self._decoded.pop(key, None)
                self._table.data.pop(stored, None)
                self._table.send_changelog(partition, stored, None, value_serializer="raw")
            else:
                raw = self._encoder.encode(value)
                self._table.data[stored] = raw
                self._table.send_changelog(partition, stored, raw)
                self._decoded[key] = (raw, value)

    def discard(self, partitions: set[int]) -> None:
        """Forget the waiting writes of partitions this worker lost: their next owner restores the changelog."""
        for key in [k for k, (p, _) in self._unflushed.items() if p in partitions]:
            del self._unflushed[key]


class CommitFlush(faust.Sensor):
    """Flushes the brand tables as each offset commit begins, before Faust picks the offsets it commits."""

    def __init__(self, tables: Sequence[StructTable[Any]]) -> None:
        super().__init__()
        self._tables = tables

    def on_commit_initiated(self, consumer: Any) -> None:
        for table in self._tables:
            table.flush()


def _current_partition() -> int:
    event = faust.current_event()
    if event is None:
        raise RuntimeError("brand state can only change while the agent handles a record")
    return int(event.message.partition)


class BrandAgents:
    """What register_brand_agents wired: the monitor (over the tables) and the per-partition clocks."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        config: MonitorConfig,
        webhook: AlertmanagerWebhook | None,
        idle_s: float,
    ) -> None:
        partitions = settings.topic_partitions
        self.app = app
        self.idle_ms = int(idle_s * 1000)
        self.mentions = app.topic(settings.mentions_topic, key_type=bytes, value_type=bytes, partitions=partitions)
        self.stats_topic = app.topic(settings.brand_stats_topic, key_type=bytes, value_type=bytes)
        self.alerts_topic = app.topic(settings.alerts_topic, key_type=bytes, value_type=bytes)
        self.brand_table = app.Table("brand-monitor-state", key_type=bytes, value_type=bytes, partitions=partitions)
        self.author_table = app.Table("brand-monitor-authors", key_type=bytes, value_type=bytes, partitions=partitions)
        self.index_table = app.Table(
            "brand-monitor-partitions", key_type=bytes, value_type=bytes, partitions=partitions
        )
        states = StructTable(self.brand_table, BrandState)
        authors = StructTable(self.author_table, AuthorState)
        self.monitor = BrandMonitor(config, states, authors)
        self.index: StructTable[list[str]] = StructTable(self.index_table, list[str])
        # Flushed in this order: a brand's state marks its mentions seen, so a redelivered mention is skipped;
        # the author histories it updated go first (they skip a post they hold), else a worker killed between
        # the two would restart with the mention seen and missing from its author's history.
        self.tables: tuple[StructTable[Any], ...] = (authors, self.index, states)
        self.webhook = webhook
        self.webhook_queue: asyncio.Queue[Alert] | None = None
        # partition -> (event time, wall ms when it was last raised by a mention); in memory only.
        self._clocks: dict[int, tuple[int, int]] = {}
        self._due: dict[int, int | None] = {}
        self._encoder = msgspec.json.Encoder()
        self._mention_decoder = msgspec.json.Decoder(BrandMention)
        self._tick_decoder = msgspec.json.Decoder(Tick)

    def _brands(self, partition: int) -> list[str]:
        return self.index.get(f"p{partition}") or []

    def _advance(self, partition: int, now_ms: int) -> list[Output]:
        due = self._due.get(partition)
        if due is not None and now_ms < due:
            return []
        brands = self._brands(partition)
        outputs = self.monitor.advance(now_ms, brands)
        dues = [d for d in (self.monitor.next_close_ms(b) for b in brands) if d is not None]
        self._due[partition] = min(dues) if dues else None
        return outputs

    def on_mention(self, partition: int, raw: bytes) -> list[Output]:
        mention = self._mention_decoder.decode(raw)
        clock = self._clocks.get(partition, (0, 0))
        if mention.created_at > clock[0]:
            self._clocks[partition] = (mention.created_at, _wall_ms())
        outputs = self._advance(partition, max(clock[0], mention.created_at))
        brands = self._brands(partition)
        if mention.brand not in brands:
            self.index[f"p{partition}"] = [*brands, mention.brand]
        outputs.extend(self.monitor.observe(mention))
        due = self.monitor.next_close_ms(mention.brand)
        current = self._due.get(partition)
        if due is not None and (current is None or due < current):
            self._due[partition] = due
        return outputs

    def on_tick(self, partition: int, raw: bytes) -> list[Output]:
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

    def on_revoked(self, revoked: set[TP]) -> None:
        """Lost partitions: what their records changed and no commit flushed is the next owner's to redo."""
        partitions = {tp.partition for tp in revoked if tp.topic == self.mentions.get_topic_name()}
        for table in self.tables:
            table.discard(partitions)

    async def emit(self, outputs: list[Output]) -> None:
        for output in outputs:
            key = output.brand.encode()
            value = self._encoder.encode(output)
            if isinstance(output, Alert | AuthorEscalation):
                await self.alerts_topic.send(key=key, value=value)
                if isinstance(output, Alert) and self.webhook_queue is not None:
                    self.webhook_queue.put_nowait(output)
            else:
                await self.stats_topic.send(key=key, value=value)

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
    *,
    webhook_url: str | None = None,
    tick_s: float = 5.0,
    idle_s: float = 10.0,
) -> BrandAgents:
    """Add the brand monitor agent, its tables, the tick timer and (with a webhook URL) the delivery task."""
    webhook = AlertmanagerWebhook(webhook_url) if webhook_url else None
    agents = BrandAgents(app, settings, config or MonitorConfig(), webhook, idle_s)

    @app.agent(agents.mentions, name="socialpulse-brand-monitor")
    async def monitor_mentions(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            partition = event.message.partition
            raw = event.value
            if event.key == TICK_KEY:
                outputs = agents.on_tick(partition, raw)
            else:
                try:
                    outputs = agents.on_mention(partition, raw)
                except msgspec.DecodeError as error:
                    where = f"{event.message.topic}[{partition}]@{event.message.offset}"
                    log.error("skipping an undecodable brand mention at %s: %s", where, error)
                    continue
            await agents.emit(outputs)

    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        agents.on_revoked(args[0])

    app.on_partitions_revoked.connect(on_revoked)
    app.sensors.add(CommitFlush(agents.tables))

    # Called, not used as a decorator: Faust's timer is untyped.
    app.timer(tick_s, name="socialpulse-brand-ticks")(agents.send_ticks)

    if webhook is not None:
        app.task(agents.deliver_webhooks)

    return agents
