"""The processor against the real broker: every post accounted for, through bad input, SIGKILL and scale-out."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from stream.schema import RejectReason
from stream.tools.kafka_local import LocalKafka
from stream.tools.sample_posts import LabelledRecord, labelled_stream, load_tweet_texts
from tests.integration.harness import (
    Outputs,
    Topics,
    WorkerProcess,
    fresh_broker,
    produce,
    read_outputs,
    wait_for_commits,
)

pytestmark = pytest.mark.integration
# The strict broker's port above the session broker's (see conftest.py).
STRICT_BROKER_OFFSET = 5


@pytest.fixture(scope="module")
def tweet_texts() -> list[str]:
    return load_tweet_texts()


def assert_each_valid_post_once(outputs: Outputs, valid: list[LabelledRecord]) -> None:
    expected = Counter(record.post_id for record in valid)
    assert outputs.sentiment_posts() == expected
    assert outputs.behaviour_posts() == expected


def assert_only_redelivery_duplicates(outputs: Outputs, valid: list[LabelledRecord]) -> tuple[int, int]:
    """Every valid post came out at least once; any repeat is a byte-identical event id. Returns repeats."""
    repeats = []
    for events, head in ((outputs.sentiment, "sentiment"), (outputs.behaviour, "behaviour")):
        by_post: dict[str, set[str]] = {}
        for event in events:
            by_post.setdefault(str(event["post_id"]), set()).add(str(event["event_id"]))
        assert set(by_post) == {record.post_id for record in valid}, f"{head}: posts missing or invented"
        assert all(len(ids) == 1 for ids in by_post.values()), f"{head}: a repeat with a different event_id"
        repeats.append(len(events) - len(by_post))
    return repeats[0], repeats[1]


def test_ten_thousand_posts_with_malformed_mix(kafka: Any, tweet_texts: list[str], tmp_path: Path) -> None:
    topics = Topics()
    records = labelled_stream(tweet_texts, 10_000, malformed_share=0.05, seed=11)
    valid = [record for record in records if record.expected is None]
    bad = [record for record in records if record.expected is not None]
    assert len(bad) == 500 and len({record.expected for record in bad}) == 11, "every bad kind is exercised"

    worker = WorkerProcess(kafka.bootstrap, topics, tmp_path, "worker").start()
    try:
        worker.wait_ready()
        asyncio.run(produce(kafka.bootstrap, topics.posts, records))
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(valid), len(bad), timeout=600))
    finally:
        assert worker.stop() == 0, worker.log_tail()

    assert_each_valid_post_once(outputs, valid)
    assert len(outputs.dead_letters) == len(bad)
    assert Counter(reason for reason, _, _ in outputs.dead_letters) == Counter(
        r.expected.value for r in bad if r.expected
    )
    # The DLQ keeps the original bytes, and says where they came from.
    assert sorted(raw for _, raw, _ in outputs.dead_letters) == sorted(record.raw for record in bad)
    for _, _, headers in outputs.dead_letters:
        assert headers["socialpulse.source.topic"].decode() == topics.posts
        assert int(headers["socialpulse.source.offset"]) >= 0
    sample = outputs.sentiment[0]
    assert set(sample) >= {"event_id", "post_id", "brands", "label", "scores", "language", "model", "timestamps"}
    assert set(sample["timestamps"]) == {"created_at", "ingested_at", "emitted_at"}  # type: ignore[arg-type]


def worker_midway(
    kafka: Any, topics: Topics, tmp_path: Path, records: list[LabelledRecord], events: int
) -> WorkerProcess:
    """A worker started on `records`, returned once `events` sentiment events are out (120 s at most)."""
    worker = WorkerProcess(kafka.bootstrap, topics, tmp_path, "first").start()
    worker.wait_ready()
    asyncio.run(produce(kafka.bootstrap, topics.posts, records))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(asyncio.run(read_outputs(kafka.bootstrap, topics, 0, 0, timeout=1)).sentiment) >= events:
            break
    return worker


def finish_with_second_worker(kafka: Any, topics: Topics, tmp_path: Path, records: list[LabelledRecord]) -> Outputs:
    second = WorkerProcess(kafka.bootstrap, topics, tmp_path, "second").start()
    try:
        second.wait_ready()
        return asyncio.run(read_outputs(kafka.bootstrap, topics, len(records), 0, timeout=600))
    finally:
        assert second.stop() == 0, second.log_tail()


def restarted_if_stopped(
    kafka: Any, topics: Topics, tmp_path: Path, worker: WorkerProcess, wait_s: float
) -> list[WorkerProcess]:
    """The worker and, if it stops within `wait_s`, the one a supervisor would start in its place."""
    assert worker.process is not None
    try:
        worker.process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return [worker]
    return [worker, WorkerProcess(kafka.bootstrap, topics, tmp_path, "restarted").start()]


def test_sigkill_mid_stream_loses_nothing(kafka: Any, tweet_texts: list[str], tmp_path: Path) -> None:
    topics = Topics()
    records = labelled_stream(tweet_texts, 6_000, malformed_share=0.0, seed=12)
    first = worker_midway(kafka, topics, tmp_path, records, events=1_000)
    first.kill()
    killed_at = asyncio.run(read_outputs(kafka.bootstrap, topics, 0, 0, timeout=2))
    assert len(killed_at.sentiment_posts()) < len(records), "the worker finished before it could be killed"
    outputs = finish_with_second_worker(kafka, topics, tmp_path, records)

    sentiment_repeats, behaviour_repeats = assert_only_redelivery_duplicates(outputs, records)
    # Repeats come only from work in flight at the kill: bounded by the in-flight token budget, not the stream.
    assert sentiment_repeats < 2_000 and behaviour_repeats < 2_000
    print(f"after SIGKILL: {sentiment_repeats} sentiment / {behaviour_repeats} behaviour repeats, 0 lost")


def test_sigterm_mid_stream_commits_the_finished_work(kafka: Any, tweet_texts: list[str], tmp_path: Path) -> None:
    # A graceful stop drains what is in flight and commits it: the next worker repeats nothing.
    topics = Topics()
    records = labelled_stream(tweet_texts, 6_000, malformed_share=0.0, seed=14)
    first = worker_midway(kafka, topics, tmp_path, records, events=1_000)
    assert first.stop() == 0, first.log_tail()
    stopped_at = asyncio.run(read_outputs(kafka.bootstrap, topics, 0, 0, timeout=2))
    assert len(stopped_at.sentiment_posts()) < len(records), "the worker finished before it was stopped"
    outputs = finish_with_second_worker(kafka, topics, tmp_path, records)
    sentiment_repeats, behaviour_repeats = assert_only_redelivery_duplicates(outputs, records)
    assert (sentiment_repeats, behaviour_repeats) == (0, 0), first.log_tail()


def test_broker_stopped_longer_than_the_request_timeout_loses_nothing(
    kafka: Any, tweet_texts: list[str], tmp_path: Path
) -> None:
    # The broker goes away for longer than aiokafka's 40 s request timeout. The worker may stop (outputs
    # it cannot deliver fail the pipeline); a supervisor would start it again, as this test does.
    topics = Topics()
    records = labelled_stream(tweet_texts, 3_000, malformed_share=0.02, seed=15)
    valid = [record for record in records if record.expected is None]
    bad = [record for record in records if record.expected is not None]
    first = worker_midway(kafka, topics, tmp_path, records, events=300)
    kafka.stop()
    outage_started = time.monotonic()
    time.sleep(45)
    kafka.start()
    outage_s = time.monotonic() - outage_started
    # It stops on undeliverable outputs, or rides the outage out.
    workers = restarted_if_stopped(kafka, topics, tmp_path, first, wait_s=90)
    try:
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(valid), len(bad), timeout=600))
    finally:
        codes = [worker.stop() for worker in workers]
    assert codes[-1] == 0, workers[-1].log_tail()
    repeats = assert_only_redelivery_duplicates(outputs, valid)
    assert {r.raw for r in bad} <= {raw for _, raw, _ in outputs.dead_letters}
    print(f"broker down {outage_s:.0f} s: {len(workers)} worker runs, repeats {repeats}, 0 lost")


@pytest.fixture(scope="module")
def strict_kafka() -> Iterator[LocalKafka]:
    """A broker that creates no topic on demand, as production clusters are usually set up."""
    with fresh_broker(STRICT_BROKER_OFFSET, server_properties={"auto.create.topics.enable": "false"}) as broker:
        yield broker


@pytest.mark.parametrize("broker", ["kafka", "strict_kafka"], ids=["auto-creating", "not-auto-creating"])
def test_the_dlq_topic_deleted_while_the_worker_runs_loses_nothing(
    broker: str, tweet_texts: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # An operator deletes the DLQ topic under a running worker, then invalid records keep coming. Dead
    # letters written before the deletion went with the topic; every later one must be in the new topic.
    # A broker that auto-creates topics makes a new one on the next send. One that does not leaves the
    # dead letters undeliverable: the worker must stop with them uncommitted, and its restart (as a
    # supervisor would) recreates the topic at start and redoes them.
    kafka = request.getfixturevalue(broker)
    topics = Topics()
    records = labelled_stream(tweet_texts, 3_000, malformed_share=0.1, seed=16)
    before, after = records[:1_500], records[1_500:]
    first = worker_midway(kafka, topics, tmp_path, before, events=300)
    asyncio.run(delete_topic(kafka.bootstrap, topics.dlq))
    asyncio.run(produce(kafka.bootstrap, topics.posts, after))
    workers = restarted_if_stopped(kafka, topics, tmp_path, first, wait_s=120)
    if broker == "strict_kafka":
        assert len(workers) == 2, "the worker ran on with its dead letters undeliverable"
    valid = [r for r in records if r.expected is None]
    bad_after = [r for r in after if r.expected is not None]
    # The duplicate-id memory is the process's own: a restarted worker delivers a repeat of a post whose first
    # copy an earlier run committed, as an identical event (same event_id), rather than dead-lettering it.
    repeats = [r for r in bad_after if r.expected is RejectReason.DUPLICATE_ID]
    try:
        # Committed to the end: every record's outputs or dead letter is in Kafka, so one read finds them all.
        ends, committed = asyncio.run(wait_for_commits(kafka.bootstrap, topics.fields()["app_id"], topics.posts, 600))
        assert all(committed.get(p, 0) >= end for p, end in ends.items()), workers[-1].log_tail()
        outputs = asyncio.run(
            read_outputs(kafka.bootstrap, topics, len(valid), len(bad_after) - len(repeats), timeout=120)
        )
    finally:
        codes = [worker.stop() for worker in workers]
    assert codes[-1] == 0, workers[-1].log_tail()
    assert_only_redelivery_duplicates(outputs, valid)
    dead = {raw for _, raw, _ in outputs.dead_letters}
    assert {r.raw for r in bad_after if r not in repeats} <= dead
    delivered_again = [r for r in repeats if r.raw not in dead]
    assert all(outputs.sentiment_posts()[r.post_id] > 1 for r in delivered_again)
    if len(workers) == 1:
        assert not delivered_again
    print(
        f"DLQ deleted mid-stream: {len(workers)} worker runs, {len(bad_after)} later bad records, "
        f"{len(bad_after) - len(delivered_again)} in the new DLQ, {len(delivered_again)} duplicates re-delivered"
    )


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def test_two_workers_share_partitions(kafka: Any, tweet_texts: list[str], tmp_path: Path) -> None:
    topics = Topics()
    records = labelled_stream(tweet_texts, 6_000, malformed_share=0.0, seed=13)
    workers = [WorkerProcess(kafka.bootstrap, topics, tmp_path, f"w{i}").start() for i in range(2)]
    try:
        for worker in workers:
            worker.wait_ready()
        asyncio.run(produce(kafka.bootstrap, topics.posts, records))
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(records), 0, timeout=600))
        consumed = [posts_consumed(worker) for worker in workers]
    finally:
        codes = [worker.stop() for worker in workers]
    assert codes == [0, 0], "\n".join(worker.log_tail() for worker in workers)
    assert_only_redelivery_duplicates(outputs, records)
    # Both took part: the group split the partitions between them.
    assert all(count > 0 for count in consumed), consumed
    assert sum(consumed) >= len(records)
    print(f"two workers consumed {consumed}")


def posts_consumed(worker: WorkerProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "socialpulse_posts_consumed":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    raise AssertionError("socialpulse_posts_consumed_total not exported")
