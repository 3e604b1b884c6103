"""Dead letters always fit the DLQ (issue 13, finding 5), and a flood of them waits for a slow broker
within a bound (finding 6).

A record larger than the worker's producer may send (its max_request_size, 1 MB) reaches the input topic
when the topic allows it; dead-lettering it whole failed every time and stopped the worker, so the
partition never moved. The DLQ now keeps a capped prefix, with the original's length and sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.schema import RejectReason
from stream.tools.kafka_local import LocalKafka
from stream.tools.sample_posts import LabelledRecord, labelled_stream, load_tweet_texts
from tests.integration.harness import Topics, WorkerProcess, produce, read_outputs
from tests.integration.worker_fixtures import scrape

HUGE = 1_500_000
CAP = 1_000_000


async def make_input_topic_that_takes(bootstrap: str, topic: str, max_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topic, num_partitions=4, replication_factor=1, topic_configs={"max.message.bytes": str(max_bytes)}
                )
            ]
        )
    finally:
        await admin.close()


def test_a_record_too_large_to_resend_is_dead_lettered_as_a_capped_prefix(kafka: Any, tmp_path: Path) -> None:
    topics = Topics()
    asyncio.run(make_input_topic_that_takes(kafka.bootstrap, topics.posts, 2_000_000))
    huge = LabelledRecord(b'{"id":"huge-1","text":"' + b"a" * HUGE + b'"}', "huge-1", RejectReason.RECORD_TOO_LARGE)
    valid = labelled_stream(load_tweet_texts(), 50, malformed_share=0.0, seed=21)
    worker = WorkerProcess(kafka.bootstrap, topics, tmp_path, "worker").start()
    try:
        worker.wait_ready()
        asyncio.run(produce(kafka.bootstrap, topics.posts, [*valid[:25], huge, *valid[25:]]))
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(valid), 1, timeout=120))
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert len(outputs.sentiment_posts()) == len(valid)
    [(reason, value, headers)] = outputs.dead_letters
    assert reason == RejectReason.RECORD_TOO_LARGE.value
    assert value == huge.raw[:CAP]
    assert int(headers["socialpulse.original.length"]) == len(huge.raw)
    assert headers["socialpulse.original.sha256"].decode() == hashlib.sha256(huge.raw).hexdigest()
    assert headers["socialpulse.truncated"] == b"true"


class BrokerSlowdown:
    """Makes the real broker slow: SIGSTOP for `paused_s`, SIGCONT for `running_s`, over and over. Requests
    queue in its sockets while it is stopped, so every send waits, as on an overloaded cluster."""

    def __init__(self, kafka: LocalKafka, paused_s: float = 1.0, running_s: float = 0.25) -> None:
        self.pid = int((kafka.state_dir / "kafka.pid").read_text())
        self.paused_s, self.running_s = paused_s, running_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            os.kill(self.pid, signal.SIGSTOP)
            self._stop.wait(self.paused_s)
            os.kill(self.pid, signal.SIGCONT)
            self._stop.wait(self.running_s)

    def __enter__(self) -> BrokerSlowdown:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        os.kill(self.pid, signal.SIGCONT)


def test_a_flood_of_invalid_records_against_a_slow_broker_is_held_to_the_in_flight_bound(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    bound = 50
    topics = Topics()
    # Every bad kind but the 600 kB one: the flood is many small records, the case the bound is for.
    mix = labelled_stream(load_tweet_texts(), 6_000, malformed_share=0.5, seed=21)
    flood = [r for r in mix if r.expected is not RejectReason.RECORD_TOO_LARGE]
    valid = [r for r in flood if r.expected is None]
    bad = [r for r in flood if r.expected is not None]
    worker = WorkerProcess(
        kafka.bootstrap, topics, tmp_path, "worker", SOCIALPULSE_MAX_INFLIGHT_DEAD_LETTERS=str(bound)
    ).start()
    metrics = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    in_flight: list[float] = []
    try:
        worker.wait_ready()
        asyncio.run(produce(kafka.bootstrap, topics.posts, flood))
        with BrokerSlowdown(kafka):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                in_flight.append(scrape(metrics).total("socialpulse_dead_letters_inflight"))
                time.sleep(0.1)
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(valid), len(bad), timeout=600))
    finally:
        assert worker.stop() == 0, worker.log_tail()
    # The flood pressed against the bound and never past it; then every record was accounted for.
    assert max(in_flight) == bound, in_flight
    assert outputs.sentiment_posts() == Counter(r.post_id for r in valid)
    assert sorted(raw for _, raw, _ in outputs.dead_letters) == sorted(r.raw for r in bad)
    print(f"slow broker: {len(bad)} dead letters, in flight at most {max(in_flight):.0f} (bound {bound})")
