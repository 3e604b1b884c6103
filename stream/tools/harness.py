"""Run real `socialpulse run` workers as processes (so they can be SIGKILLed) and read back every topic.

Shared by the integration tests and `socialpulse bench`, so both drive the worker the same way.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from stream.settings import REPO_ROOT
from stream.tools.sample_posts import LabelledRecord

# Below Linux's ephemeral range (32768+). A port the kernel hands out for bind(0) is released before the
# worker binds it, and any outgoing connection (dozens per worker, to Kafka) may take it meanwhile: that
# failed a two-worker test with EADDRINUSE.
_LISTEN_PORTS = range(20000, 32768)


def free_port() -> int:
    for port in random.sample(_LISTEN_PORTS, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_LISTEN_PORTS}")


@dataclass
class Topics:
    """Unique topic names and group id for one test, as the worker's env vars."""

    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")

    @property
    def posts(self) -> str:
        return f"{self.prefix}.posts"

    @property
    def sentiment(self) -> str:
        return f"{self.prefix}.sentiment"

    @property
    def behaviour(self) -> str:
        return f"{self.prefix}.behaviour"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    def fields(self) -> dict[str, str]:
        """The `Settings` fields these names replace."""
        return {
            "app_id": f"{self.prefix}-app",
            "input_topic": self.posts,
            "sentiment_topic": self.sentiment,
            "behaviour_topic": self.behaviour,
            "dlq_topic": self.dlq,
            "mentions_topic": f"{self.prefix}.mentions",
            "brand_stats_topic": f"{self.prefix}.brand_stats",
            "alerts_topic": f"{self.prefix}.alerts",
            "stories_topic": f"{self.prefix}.stories",
            "share_topic": f"{self.prefix}.share",
        }

    def env(self) -> dict[str, str]:
        return {f"SOCIALPULSE_{name.upper()}": value for name, value in self.fields().items()}


WORKER_COMMAND = ("-m", "stream", "run", "--loglevel", "info")


class WorkerProcess:
    """One `socialpulse run` (or another Python `command`) in its own process group, logging to a file."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        log_dir: Path,
        name: str,
        command: Sequence[str] = WORKER_COMMAND,
        **extra_env: str,
    ) -> None:
        self.command = list(command)
        self.web_port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.env = {
            **os.environ,
            **topics.env(),
            "SOCIALPULSE_KAFKA_BOOTSTRAP": bootstrap,
            "SOCIALPULSE_WEB_PORT": str(self.web_port),
            "SOCIALPULSE_METRICS_PORT": str(self.metrics_port),
            "SOCIALPULSE_BROKER_SESSION_TIMEOUT_S": "6",
            "SOCIALPULSE_BROKER_HEARTBEAT_INTERVAL_S": "1",
            "SOCIALPULSE_BROKER_COMMIT_INTERVAL_S": "0.5",
            **extra_env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, *self.command],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 120.0, marker: str = "socialpulse pipeline ready") -> None:
        """Until the log holds `marker` (a brands-role worker has no pipeline: wait for Faust's "Ready")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.log_path.read_text(errors="replace"):
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"worker not ready; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no drain, no commit, no goodbye."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=30)


async def produce(
    bootstrap: str, topic: str, records: Iterable[LabelledRecord], client_options: Mapping[str, Any] | None = None
) -> int:
    """Send records keyed by post id (as `socialpulse replay` does), waiting for every ack."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        max_request_size=2_000_000,
        **(client_options or {}),
    )
    await producer.start()
    try:
        deliveries = [await producer.send(topic, key=r.post_id.encode(), value=r.raw) for r in records]
        await asyncio.gather(*deliveries)
        return len(deliveries)
    finally:
        await producer.stop()


@dataclass
class Outputs:
    topics: Topics
    sentiment: list[dict[str, object]] = field(default_factory=list)
    behaviour: list[dict[str, object]] = field(default_factory=list)
    # (reason header, original bytes, headers)
    dead_letters: list[tuple[str, bytes, dict[str, bytes]]] = field(default_factory=list)

    def add(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.topic == self.topics.dlq:
            headers = dict(record.headers)
            self.dead_letters.append((headers["socialpulse.reason"].decode(), record.value or b"", headers))
        elif record.topic == self.topics.sentiment:
            self.sentiment.append(msgspec.json.decode(record.value or b"{}"))
        else:
            self.behaviour.append(msgspec.json.decode(record.value or b"{}"))

    def reached(self, posts: int, dead: int) -> bool:
        """Distinct posts, not events: a redelivered post's repeat must not stand in for a missing one."""
        return (
            len(self.sentiment_posts()) >= posts
            and len(self.behaviour_posts()) >= posts
            and len(self.dead_letters) >= dead
        )

    def sentiment_posts(self) -> Counter[str]:
        return Counter(str(event["post_id"]) for event in self.sentiment)

    def behaviour_posts(self) -> Counter[str]:
        return Counter(str(event["post_id"]) for event in self.behaviour)


async def read_outputs(
    bootstrap: str,
    topics: Topics,
    expect_posts: int,
    expect_dead: int,
    timeout: float,
    client_options: Mapping[str, Any] | None = None,
) -> Outputs:
    """Read every output topic from the start until the expected counts arrive and then a quiet second
    passes (anything beyond the expected count is a duplicate the test wants to see), or time runs out."""
    consumer = AIOKafkaConsumer(
        topics.sentiment,
        topics.behaviour,
        topics.dlq,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **(client_options or {}),
    )
    await consumer.start()
    outputs = Outputs(topics)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            reached = outputs.reached(expect_posts, expect_dead)
            batches = await consumer.getmany(timeout_ms=1_000 if reached else 500, max_records=5_000)
            if reached and not batches:
                break
            for records in batches.values():
                for record in records:
                    outputs.add(record)
    finally:
        await consumer.stop()
    return outputs
