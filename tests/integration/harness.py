"""The worker-process harness lives in `stream.harness` (the benchmark drives workers the same way); what only
the tests need is here."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from stream.harness import REPO_ROOT, Outputs, Topics, WorkerProcess, free_port, produce, read_outputs
from stream.worker import topic_partitions

__all__ = [
    "REPO_ROOT",
    "Outputs",
    "Topics",
    "WorkerProcess",
    "free_port",
    "produce",
    "read_outputs",
    "wait_for_commits",
]


async def wait_for_commits(
    bootstrap: str, group: str, topic: str, timeout: float
) -> tuple[dict[int, int], dict[int, int]]:
    """(end offsets now, the group's committed offsets once they reach those ends or the timeout passes)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        partitions = await topic_partitions(admin, topic)
        ends = {tp.partition: offset for tp, offset in (await consumer.end_offsets(partitions)).items()}
        committed: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
            committed = {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
            if all(committed.get(p, 0) >= end for p, end in ends.items()):
                break
            await asyncio.sleep(0.5)
        return ends, committed
    finally:
        await admin.close()
        await consumer.stop()
