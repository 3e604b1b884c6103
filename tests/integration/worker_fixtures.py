"""`running_worker`: one real `socialpulse run` process per test session that has processed a realistic
labelled stream, for the tests that check /metrics, Prometheus and the live page against a live worker.

It is idle when tests get it (every record accounted for, offsets committed, lag probed, the brand monitor's
windows closed and their share of voice published), so its numbers hold still while a test compares two
views of them. A test that sends more (`send`) waits the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec
import pytest

from stream.brands.synthetic import demo_brands_yaml
from stream.emit import now_ms
from stream.settings import Settings
from stream.tools.kafka_local import LocalKafka
from stream.tools.sample_posts import DEMO_BRANDS, LabelledRecord, labelled_stream, load_tweet_texts
from stream.web import RegistrySnapshot
from tests.integration.harness import Topics, WorkerProcess, produce

RECORDS = 1_500
MALFORMED_SHARE = 0.05
ACCOUNTED_TIMEOUT_S = 420.0
# The lag probe runs every 5 s and the worker commits every 0.5 s: a few probes settle it.
LAG_TIMEOUT_S = 30.0
# The demo brands as one competitor set, in short windows: they close on the worker's idle ticks (10 s
# without mentions, ticks every 5 s) soon after the stream, which publishes the set's share of voice.
BRANDS_YAML = demo_brands_yaml() + f"competitor_sets:\n  demo: [{', '.join(DEMO_BRANDS)}]\n"
MONITOR = {"SOCIALPULSE_BRANDS_WINDOW_S": "5", "SOCIALPULSE_BRANDS_HOP_SIZE_S": "0"}
SHARE_TIMEOUT_S = 120.0


def scrape(url: str) -> RegistrySnapshot:
    """One /metrics exposition, indexed like the live page indexes the registry."""
    return RegistrySnapshot.fetch(url)


def fresh_stream(count: int, seed: int) -> list[LabelledRecord]:
    """Real tweets plus every malformed kind, created just now (labelled_stream spaces posts 10 ms apart,
    the last one now), so e2e latency from created_at reads as live and never undercuts ingest latency."""
    return labelled_stream(
        load_tweet_texts(), count, malformed_share=MALFORMED_SHARE, seed=seed, start_ms=now_ms() - count * 10
    )


@dataclass
class RunningWorker:
    process: WorkerProcess
    topics: Topics
    bootstrap: str
    records: list[LabelledRecord] = field(default_factory=list)

    @property
    def valid(self) -> list[LabelledRecord]:
        return [r for r in self.records if r.expected is None]

    @property
    def expected_dlq(self) -> Counter[str]:
        return Counter(r.expected.value for r in self.records if r.expected is not None)

    @property
    def expected_brand_posts(self) -> Counter[str]:
        """Brand hints of the valid posts: no tweet names a demo brand, so the hints are the worker's brands."""
        hints = (msgspec.json.decode(r.raw).get("brand") for r in self.valid)
        return Counter(brand for brand in hints if brand)

    @property
    def partitions(self) -> int:
        return Settings().topic_partitions

    @property
    def metrics_target(self) -> str:
        """host:port of the standalone exporter, as a Prometheus scrape target."""
        return f"127.0.0.1:{self.process.metrics_port}"

    @property
    def exporter_url(self) -> str:
        return f"http://{self.metrics_target}/metrics"

    def web_url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.process.web_port}{path}"

    def scrape(self) -> RegistrySnapshot:
        # The exporter, not /api/summary: the summary keeps the history its windowed percentiles diff
        # against, and only the live page test may shape that.
        return scrape(self.exporter_url)

    def accounted(self, snap: RegistrySnapshot) -> int:
        """Records with an outcome: dead-lettered, or a sentiment event (exactly one per valid post; the
        behaviour topic's counter counts labels, of which a post may have several)."""
        events = snap.by_label("socialpulse_events_produced_total", "topic").get(self.topics.sentiment, 0.0)
        return int(snap.total("socialpulse_dlq_records_total") + events)

    def send(self, records: list[LabelledRecord], *, settle_lag: bool = True) -> None:
        """Produce records and wait until the worker has accounted for every record it was ever sent
        (and, unless told not to, until its lag gauge has caught up)."""
        self.records.extend(records)
        asyncio.run(produce(self.bootstrap, self.topics.posts, records))
        self.wait_accounted()
        if settle_lag:
            self.settle_lag()

    def wait_accounted(self, timeout_s: float = ACCOUNTED_TIMEOUT_S) -> RegistrySnapshot:
        deadline = time.monotonic() + timeout_s
        while True:
            self._alive()
            snap = self.scrape()
            seen = self.accounted(snap)
            if seen > len(self.records):
                pytest.fail(f"{seen} outcomes for {len(self.records)} records: something was counted twice")
            if seen == len(self.records):
                return snap
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{seen}/{len(self.records)} records accounted for after {timeout_s:.0f}s;"
                    f" log tail:\n{self.process.log_tail()}"
                )
            time.sleep(0.5)

    def input_lag(self, snap: RegistrySnapshot) -> dict[str, float]:
        """Partition -> lag of the worker's input topic, as the worker exports it."""
        return {
            labels["partition"]: value
            for labels, value in snap.samples.get("socialpulse_consumer_lag_records", [])
            if labels.get("topic") == self.topics.posts
        }

    def settle_lag(self, timeout_s: float = LAG_TIMEOUT_S) -> dict[str, float]:
        """Wait until the lag probe reports every input partition at zero (final offsets committed), so
        the gauge holds still for the tests; they assert on it, so a probe that never reports only costs
        this wait here and fails there, with the rest of the tests still running."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._alive()
            lag = self.input_lag(self.scrape())
            if (len(lag) == self.partitions and not any(lag.values())) or time.monotonic() > deadline:
                return lag
            time.sleep(0.5)

    def wait_for_share(self, timeout_s: float = SHARE_TIMEOUT_S) -> None:
        """Until the worker exports the demo set's share of voice: its members' windows closed and published."""
        deadline = time.monotonic() + timeout_s
        while not self.scrape().samples.get("socialpulse_brand_share_of_voice"):
            self._alive()
            if time.monotonic() > deadline:
                pytest.fail(f"no share of voice after {timeout_s:.0f}s; log tail:\n{self.process.log_tail()}")
            time.sleep(0.5)

    def _alive(self) -> None:
        process = self.process.process
        if process is not None and process.poll() is not None:
            pytest.fail(f"worker exited with {process.returncode}; log tail:\n{self.process.log_tail()}")


@pytest.fixture(scope="session")
def running_worker(kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    topics = Topics()
    folder = tmp_path_factory.mktemp("running-worker")
    brands = folder / "brands.yaml"
    brands.write_text(BRANDS_YAML, encoding="utf-8")
    process = WorkerProcess(kafka.bootstrap, topics, folder, "worker", SOCIALPULSE_BRANDS_FILE=str(brands), **MONITOR)
    worker = RunningWorker(process, topics, kafka.bootstrap)
    started = time.monotonic()
    process.start()
    try:
        process.wait_ready()
        ready = time.monotonic()
        worker.send(fresh_stream(RECORDS, seed=31))
        accounted = time.monotonic()
        worker.wait_for_share()
        print(
            f"running_worker: ready in {ready - started:.1f}s,"
            f" {RECORDS} records accounted for in {accounted - ready:.1f}s,"
            f" share of voice {time.monotonic() - accounted:.1f}s later"
        )
    except BaseException:
        process.stop()
        raise
    yield worker
    code = process.stop()
    assert code == 0, f"worker exited with {code} on SIGTERM; log tail:\n{process.log_tail()}"
