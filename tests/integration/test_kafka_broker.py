"""The local broker round trip the processor relies on: idempotent acks=all produce, group consume, commit."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

N = 300
PARTITIONS = 3


@pytest.mark.timeout(120)
async def test_produce_consume_commit(
    topic_factory: Callable[..., Awaitable[str]],
    producer_factory: Callable[..., Awaitable[AIOKafkaProducer]],
    consumer_factory: Callable[..., Awaitable[AIOKafkaConsumer]],
) -> None:
    topic = await topic_factory(partitions=PARTITIONS)
    group = f"g-{topic}"
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    producer = await producer_factory(enable_idempotence=True, acks="all")
    sends = [await producer.send(topic, key=f"user-{i % 17}".encode(), value=f"post-{i}".encode()) for i in range(N)]
    acks = await asyncio.gather(*sends)
    sent_per_partition: dict[int, list[bytes]] = defaultdict(list)
    for i, ack in enumerate(acks):
        sent_per_partition[ack.partition].append(f"post-{i}".encode())
    # The keys must spread over several partitions, or the per-partition checks below prove little.
    assert len(sent_per_partition) > 1

    consumer = await consumer_factory(
        topic, group_id=group, enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=1000
    )
    received: list[ConsumerRecord[bytes, bytes]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while len(received) < N and loop.time() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            received.extend(records)
    assert len(received) == N

    got_per_partition: dict[int, list[bytes]] = defaultdict(list)
    for record in received:
        assert record.value is not None
        got_per_partition[record.partition].append(record.value)
    # Exactly once each (idempotent producer), in send order within a partition.
    assert got_per_partition == sent_per_partition
    assert Counter(r.key for r in received) == Counter(f"user-{i % 17}".encode() for i in range(N))

    await consumer.commit()
    end_offsets = await consumer.end_offsets(tps)
    expected = {tp: len(sent_per_partition.get(tp.partition, [])) for tp in tps}
    assert end_offsets == expected
    assert {tp: await consumer.committed(tp) for tp in tps} == {
        tp: (offset if offset else None) for tp, offset in expected.items()
    }
    await consumer.stop()

    # A new member of the same group resumes at the committed offsets: nothing is redelivered.
    again = await consumer_factory(topic, group_id=group, enable_auto_commit=False)
    assert await again.getmany(timeout_ms=3000) == {}
    for tp in tps:
        assert await again.position(tp) == expected[tp]
