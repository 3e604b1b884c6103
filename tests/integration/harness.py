"""The worker-process harness lives in `stream.tools.harness` (the benchmark drives workers the same way); what only
the tests need is here."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from stream.tools.harness import REPO_ROOT, Outputs, Topics, WorkerProcess, free_port, produce, read_outputs
from stream.tools.kafka_local import LocalKafka
from stream.worker import topic_partitions

__all__ = [
    "REPO_ROOT",
    "TEST_KAFKA_PORT",
    "Outputs",
    "Topics",
    "WorkerProcess",
    "free_port",
    "fresh_broker",
    "produce",
    "read_outputs",
    "served",
    "wait_for_commits",
]

TEST_KAFKA_PORT = int(os.environ.get("SOCIALPULSE_TEST_KAFKA_PORT", "19192"))


@contextmanager
def fresh_broker(offset: int = 0, **options: Any) -> Iterator[LocalKafka]:
    """A started broker on TEST_KAFKA_PORT + offset (controller one above) with an empty cluster, stopped
    on exit. `options` go to LocalKafka: `server_properties={"auto.create.topics.enable": "false"}`,
    `sasl_ssl=SaslSslListener(...)`."""
    port = TEST_KAFKA_PORT + offset
    broker = LocalKafka(REPO_ROOT / f".cache/kafka-test-{port}", port, **options)
    # Also stops a broker left behind by a killed session, so every session sees an empty cluster.
    broker.reset()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def wait_for_commits(
    bootstrap: str, group: str, topic: str, timeout: float, client_options: Mapping[str, Any] | None = None
) -> tuple[dict[int, int], dict[int, int]]:
    """(end offsets now, the group's committed offsets once they reach those ends or the timeout passes)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **(client_options or {}))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client_options or {}))
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


@contextmanager
def served(
    binary: str, package: str, args: Sequence[str], ready_url: str, log: Path, timeout_s: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A server from a Debian package (Prometheus, Alertmanager) run with `args` and logging to `log`, handed out
    once `ready_url` answers; terminated, then killed if it lingers, on the way out."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} not found: run scripts/system-deps.sh (Debian package {package})")
    with log.open("wb") as out:
        process = subprocess.Popen([path, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{binary} did not become ready:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
