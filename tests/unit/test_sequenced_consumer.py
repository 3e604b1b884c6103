"""The worker's consumer fetches a partition again from a record Faust never delivered, and delivers
nothing of that partition from a fetch that may predate the seek, except that record.

Faust seeks the stream partitions to their committed offsets after a restore while they are fetching;
records fetched before the seek went on being delivered after it, and Faust then dropped records it had
never handed to the agent as read (its read offset had moved past them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream.ingest import commit_sequencer
from stream.settings import Settings
from stream.worker import create_app

P0 = TP("mentions", 0)
P1 = TP("mentions", 1)


@dataclass
class Record:
    offset: int


class FakeBroker:
    """Each fetch yields the records of its offsets per partition, in turn; a seek moves a partition."""

    def __init__(self) -> None:
        self.position = {P0: 0, P1: 0}
        self.seeks: list[tuple[TP, int]] = []
        self.batch = 4
        self.before_fetch_returns: list[Any] = []

    def fetch(self) -> list[tuple[TP, Record]]:
        records = []
        for i in range(self.batch):
            for tp in (P0, P1):
                records.append((tp, Record(self.position[tp] + i)))
        for tp in (P0, P1):
            self.position[tp] += self.batch
        return records


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
    broker = FakeBroker()

    async def wait_next_records(self: Any, timeout: float) -> tuple[list[tuple[TP, Record]], None]:
        records = broker.fetch()
        for step in broker.before_fetch_returns:
            await step(self)
        broker.before_fetch_returns.clear()
        return records, None

    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Record]]:
        records, _ = await self._wait_next_records(timeout)
        for tp, record in records:
            yield tp, record

    async def seek(self: Any, partition: TP, offset: int) -> None:
        broker.seeks.append((partition, offset))
        broker.position[partition] = offset
        self._read_offset[partition] = offset

    monkeypatch.setattr(faust_aiokafka.Consumer, "_wait_next_records", wait_next_records)
    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", getmany)
    monkeypatch.setattr(faust_aiokafka.Consumer, "seek", seek)
    return broker


@pytest.fixture
def consumer(broker: FakeBroker, tmp_path: Path) -> Any:
    app = create_app(Settings(data_dir=tmp_path))
    commit_sequencer(app).govern("mentions", gap_free=True)
    return app.consumer


async def fetched(consumer: Any) -> list[tuple[int, int]]:
    return [(tp.partition, record.offset) async for tp, record in consumer.getmany(timeout=1.0)]


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_records_fetched_before_the_seek_wait_for_the_fetch_from_the_asked_offset(
    consumer: Any, broker: FakeBroker
) -> None:
    assert await fetched(consumer) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2), (0, 3), (1, 3)]
    # Offsets 1-3 of P0 were skipped on the way; the next fetch is already in hand when the seek is done.
    consumer._read_offset[P0] = 6
    broker.before_fetch_returns.append(lambda self: _ask_again(self, P0, 1))
    assert await fetched(consumer) == [(1, 4), (1, 5), (1, 6), (1, 7)], "P0's records in hand are not delivered"
    await settle()
    assert broker.seeks[0] == (P0, 1)
    # The fetch from offset 1 (after the seeks) is delivered, with Faust's read offset cleared so that Faust
    # does not drop it as read.
    assert await fetched(consumer) == [(0, 1), (1, 8), (0, 2), (1, 9), (0, 3), (1, 10), (0, 4), (1, 11)]
    assert consumer._read_offset[P0] is None


async def test_a_fetch_from_the_asked_offset_that_starts_later_shows_the_brokers_hole(
    consumer: Any, broker: FakeBroker
) -> None:
    sequencer = commit_sequencer(consumer.app)
    sequencer.track(P0, 0)
    assert sequencer.track(P0, 5) is None  # asks for offset 1 again
    await settle()
    assert broker.seeks == [(P0, 1)]
    broker.position[P0] = 5  # the broker has nothing at 1-4
    records = await fetched(consumer)
    assert [offset for partition, offset in records if partition == 0] == [5, 6, 7, 8]
    assert sequencer.track(P0, 5) is not None, "taken as where the partition resumes"


async def _ask_again(consumer: Any, tp: TP, offset: int) -> None:
    consumer.refetch(tp, offset)
    await settle()
