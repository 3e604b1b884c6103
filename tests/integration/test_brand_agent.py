"""The brand monitor agent on real Kafka: a worker SIGKILLed mid-window and restarted ends with the same
window aggregates as the same mentions run uninterrupted through BrandMonitor (what the backtest runs); and
inside the full worker, beside ingest, it commits the mentions it has handled."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.brands.backtest import Classification
from stream.brands.model import BrandStats, Output
from stream.brands.monitor import BrandMonitor, MonitorConfig
from stream.brands.query import BrandCatalog, post_brands
from stream.brands.synthetic import Burst, StreamSpec, demo_brands_yaml, load_rated_tweets, synthetic_posts
from stream.emit import build_mention
from stream.kafka_local import LocalKafka
from stream.sample_posts import labelled_stream, load_tweet_texts
from stream.schema import BrandMention
from stream.settings import Settings
from stream.validate import SourceRef, ValidPost
from stream.worker import build_validator
from tests.integration.harness import REPO_ROOT, Topics, WorkerProcess, free_port, read_outputs, wait_for_commits
from tests.integration.harness import produce as produce_posts

MINUTE = 60_000
OutputUnion = msgspec.json.Decoder(Output)


def mentions_for(spec: StreamSpec) -> list[BrandMention]:
    validator = build_validator(Settings())
    catalog = BrandCatalog.from_yaml_text(demo_brands_yaml())
    mentions = []
    for n, post in enumerate(synthetic_posts(spec, load_rated_tweets())):
        valid = validator.validate(msgspec.json.encode(post), SourceRef("t", 0, n))
        assert isinstance(valid, ValidPost)
        labels = Classification(post["sentiment"], post["sentiment_scores"], post["behaviours"])  # type: ignore[arg-type]
        mentions += [build_mention(valid, brand, labels) for brand in post_brands(valid, catalog)]
    return mentions


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("brand_monitor_worker.py")), "worker"],
        cwd=REPO_ROOT,
        # The app's web port, not faust's --web-port flag, decides where it listens.
        env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT), "SOCIALPULSE_WEB_PORT": str(free_port())},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def produce(bootstrap: str, topic: str, mentions: list[BrandMention]) -> None:
    encoder = msgspec.json.Encoder()
    await produce_raw(bootstrap, topic, [(m.brand.encode(), encoder.encode(m)) for m in mentions])


async def produce_raw(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, key=key, value=value) for key, value in records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def create_topics(bootstrap: str, settings: Settings, configs: dict[str, dict[str, str]] | None = None) -> None:
    """The topics the brand monitor reads and writes, `configs` per topic name."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = (settings.mentions_topic, settings.brand_stats_topic, settings.alerts_topic, settings.dlq_topic)
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=settings.topic_partitions,
                    replication_factor=1,
                    topic_configs=(configs or {}).get(name, {}),
                )
                for name in names
            ]
        )
    finally:
        await admin.close()


def expected_stats(mentions: list[BrandMention], until: int) -> dict[tuple[str, str, int], BrandStats]:
    """What an uninterrupted monitor emits for `mentions`: the stats of windows ending at or before `until`."""
    reference = BrandMonitor(MonitorConfig())
    outputs: list[Output] = []
    for m in mentions:
        outputs += reference.advance(m.created_at) + reference.observe(m)
    return {
        (o.brand, o.window.kind, o.window.start): o
        for o in outputs
        if isinstance(o, BrandStats) and o.window.end <= until
    }


def with_sentinels(mentions: list[BrandMention]) -> tuple[list[BrandMention], int]:
    """The mentions and one per brand far after them, which closes every window up to the returned end
    plus 10 minutes in every partition."""
    last = max(m.created_at for m in mentions)
    end = last - last % MINUTE + MINUTE
    sentinels = [
        msgspec.structs.replace(m, post_id=f"sentinel-{m.brand}", created_at=end + 20 * MINUTE)
        for m in {m.brand: m for m in mentions}.values()
    ]
    return [*mentions, *sentinels], end


def brand_env(bootstrap: str) -> tuple[dict[str, str], Settings]:
    env = {
        **Topics().env(),
        "SOCIALPULSE_KAFKA_BOOTSTRAP": bootstrap,
        "SOCIALPULSE_BROKER_COMMIT_INTERVAL_S": "0.5",
        "SOCIALPULSE_BROKER_SESSION_TIMEOUT_S": "6",
    }
    settings = Settings(**{k.removeprefix("SOCIALPULSE_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    return env, settings


async def read_stats(
    bootstrap: str,
    topic: str,
    until: int,
    timeout: float,
    expect: set[tuple[str, str, int]] | None = None,
) -> dict[tuple[str, str, int], BrandStats]:
    """Every window stat that ends at or before `until`, deduplicated by (brand, kind, start), read until it
    holds every key of `expect` (without: a window that ends at `until`), then for 2 s more."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[tuple[str, str, int], BrandStats] = {}

    async def poll() -> None:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            for record in records:
                output = OutputUnion.decode(record.value or b"")
                if isinstance(output, BrandStats) and output.window.end <= until:
                    key = (output.brand, output.window.kind, output.window.start)
                    assert key not in found or found[key] == output, (found[key], output)
                    found[key] = output

    def complete() -> bool:
        if expect is not None:
            return expect <= found.keys()
        return bool(found) and max(s.window.end for s in found.values()) >= until

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not complete():
            await poll()
        settle = time.monotonic() + 2
        while time.monotonic() < settle:
            await poll()
    finally:
        await consumer.stop()
    return found


async def test_kill_and_restart_mid_window_gives_the_uninterrupted_aggregates(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    spec = StreamSpec(minutes=12, seed=3, per_minute=15, bursts=[Burst("Acme", 8.0, minutes=2)])
    mentions = mentions_for(spec)
    stream, end = with_sentinels(mentions)
    expected = expected_stats(stream, end + 10 * MINUTE)
    env, settings = brand_env(kafka.bootstrap)
    await create_topics(kafka.bootstrap, settings)

    # Cut in the middle of a window: the worker holds a half-filled window when it dies.
    cut = next(i for i, m in enumerate(mentions) if m.created_at >= spec.start_ms + 6 * MINUTE + 30_000)
    await produce(kafka.bootstrap, settings.mentions_topic, mentions[:cut])
    log = tmp_path / "worker.log"
    first = start_worker(env, log)
    try:
        await read_stats(kafka.bootstrap, settings.brand_stats_topic, spec.start_ms + 5 * MINUTE, timeout=120)
        await asyncio.sleep(3)  # let it take in the rest of what was produced
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)

    await produce(kafka.bootstrap, settings.mentions_topic, stream[cut:])
    second = start_worker(env, log)
    try:
        found = await read_stats(
            kafka.bootstrap, settings.brand_stats_topic, end + 10 * MINUTE, timeout=180, expect=set(expected)
        )
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=60)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert set(found) == set(expected), tail
    assert found == expected, tail


async def read_dead_letters(bootstrap: str, topic: str, expect: int, timeout: float) -> list[dict[str, bytes]]:
    """The headers of the topic's records (plus the value under "value"), once `expect` are in or at the timeout."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    letters: list[dict[str, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(letters) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                letters += [{**dict(r.headers), "value": r.value or b""} for r in records]
    finally:
        await consumer.stop()
    return letters


async def test_a_mention_the_monitor_fails_on_is_dead_lettered_and_its_changes_undone(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    # Any error while handling a mention acked it anyway (Faust's stream acks the event it was on), with
    # whatever the monitor had changed kept; only undecodable mentions were caught, logged and skipped.
    mentions = mentions_for(StreamSpec(minutes=6, seed=4, per_minute=15))
    poison = mentions[len(mentions) // 2]
    undecodable = (poison.brand.encode(), b"\xff\xfe not a mention")
    stream, end = with_sentinels(mentions)
    expected = expected_stats([m for m in stream if m is not poison], end + 10 * MINUTE)
    env, settings = brand_env(kafka.bootstrap)
    await create_topics(kafka.bootstrap, settings)
    cut = len(mentions) // 3
    encoder = msgspec.json.Encoder()
    records = [(m.brand.encode(), encoder.encode(m)) for m in stream]
    await produce_raw(kafka.bootstrap, settings.mentions_topic, [*records[:cut], undecodable, *records[cut:]])

    log = tmp_path / "worker.log"
    worker = start_worker({**env, "BRAND_TEST_FAIL_AFTER_OBSERVING": poison.post_id}, log)
    try:
        found = await read_stats(
            kafka.bootstrap, settings.brand_stats_topic, end + 10 * MINUTE, timeout=180, expect=set(expected)
        )
        letters = await read_dead_letters(kafka.bootstrap, settings.dlq_topic, expect=2, timeout=30)
        ends, committed = await wait_for_commits(
            kafka.bootstrap, env["SOCIALPULSE_APP_ID"], settings.mentions_topic, 30
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    reasons = sorted(letter["socialpulse.reason"].decode() for letter in letters)
    assert reasons == ["internal_error", "invalid_mention"], (letters, tail)
    poisoned = next(letter for letter in letters if letter["socialpulse.reason"] == b"internal_error")
    assert msgspec.json.decode(poisoned["value"], type=BrandMention) == poison
    assert found == expected, tail
    assert all(committed.get(p, 0) >= offset for p, offset in ends.items()), (ends, committed, tail)


async def test_outputs_kafka_refuses_stop_the_worker_before_their_mentions_are_committed(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    # Faust only logs a failed send; the mentions behind it were committed all the same, and their window
    # stats were lost for good.
    mentions = mentions_for(StreamSpec(minutes=4, seed=5, per_minute=15))
    stream, _ = with_sentinels(mentions)
    env, settings = brand_env(kafka.bootstrap)
    # Every window stat is larger than this, so the broker refuses each one.
    await create_topics(kafka.bootstrap, settings, {settings.brand_stats_topic: {"max.message.bytes": "64"}})
    await produce(kafka.bootstrap, settings.mentions_topic, stream)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        exit_code = await asyncio.to_thread(worker.wait, 120)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    ends, committed = await wait_for_commits(kafka.bootstrap, env["SOCIALPULSE_APP_ID"], settings.mentions_topic, 1)
    assert exit_code != 0, tail
    assert "was not acknowledged, stopping" in log.read_text(errors="replace"), tail
    with_mentions = [p for p, offset in ends.items() if offset > 0]
    assert with_mentions and all(committed.get(p, 0) < ends[p] for p in with_mentions), (ends, committed, tail)


async def test_a_worker_that_loses_its_partitions_commits_the_work_it_finished(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    # Revoked partitions were forgotten before Faust's revoke-time commit ran, so what the worker had
    # finished since its last periodic commit was not committed and their next owner did it again.
    spec = StreamSpec(minutes=3, seed=6, per_minute=15)
    mentions = mentions_for(spec)
    env, settings = brand_env(kafka.bootstrap)
    env["SOCIALPULSE_BROKER_COMMIT_INTERVAL_S"] = "120"  # no periodic commit during the test
    await create_topics(kafka.bootstrap, settings)
    await produce(kafka.bootstrap, settings.mentions_topic, mentions)
    log = tmp_path / "worker.log"
    first = start_worker(env, log)
    second = None
    try:
        await read_stats(kafka.bootstrap, settings.brand_stats_topic, spec.start_ms + MINUTE, timeout=120)
        await asyncio.sleep(3)  # every mention handled
        second = start_worker(env, log)  # joins the group: the first worker's partitions are revoked
        ends, committed = await wait_for_commits(
            kafka.bootstrap, env["SOCIALPULSE_APP_ID"], settings.mentions_topic, 60
        )
    finally:
        for worker in (first, second):
            if worker is not None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert all(committed.get(p, 0) >= offset for p, offset in ends.items()), (ends, committed, tail)


def test_the_full_worker_commits_the_mentions_it_has_handled(kafka: LocalKafka, tmp_path: Path) -> None:
    # Ingest's commit rule once answered for every partition of the shared consumer, and never committed
    # the mentions topic: each restart re-read every retained mention, which slowed long-lived setups.
    topics = Topics()
    records = labelled_stream(load_tweet_texts(), 300, malformed_share=0.0, seed=5)
    brands_file = str(REPO_ROOT / "deploy/brands/demo.yaml")
    worker = WorkerProcess(kafka.bootstrap, topics, tmp_path, "worker", SOCIALPULSE_BRANDS_FILE=brands_file).start()
    try:
        worker.wait_ready()
        asyncio.run(produce_posts(kafka.bootstrap, topics.posts, records))
        asyncio.run(read_outputs(kafka.bootstrap, topics, len(records), 0, timeout=300))
        fields = topics.fields()
        ends, committed = asyncio.run(
            wait_for_commits(kafka.bootstrap, fields["app_id"], fields["mentions_topic"], timeout=30)
        )
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert sum(ends.values()) > 0, "the posts mention no brand: nothing was tested"
    assert all(committed.get(p, 0) >= end for p, end in ends.items()), (ends, committed, worker.log_tail())


def test_pipeline_and_brands_roles_run_as_separate_processes(kafka: LocalKafka, tmp_path: Path) -> None:
    # `socialpulse run --role pipeline|brands`: the model-bound ingest and the brand monitor scale apart,
    # the brands role in its own consumer group, and between them every post and mention is handled.
    topics = Topics()
    records = labelled_stream(load_tweet_texts(), 300, malformed_share=0.0, seed=6)
    brands_file = str(REPO_ROOT / "deploy/brands/demo.yaml")
    fields = topics.fields()
    pipeline = WorkerProcess(
        kafka.bootstrap, topics, tmp_path, "pipeline", SOCIALPULSE_BRANDS_FILE=brands_file, SOCIALPULSE_ROLE="pipeline"
    ).start()
    brands = WorkerProcess(
        kafka.bootstrap,
        topics,
        tmp_path,
        "brands",
        SOCIALPULSE_BRANDS_FILE=brands_file,
        SOCIALPULSE_ROLE="brands",
        # A missing model must not matter to the brands role.
        SOCIALPULSE_MODEL_DIR=str(tmp_path / "no-model-here"),
    ).start()
    try:
        pipeline.wait_ready()
        brands.wait_ready(marker="[^Worker]: Ready")
        asyncio.run(produce_posts(kafka.bootstrap, topics.posts, records))
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(records), 0, timeout=300))
        ends, committed = asyncio.run(
            wait_for_commits(kafka.bootstrap, f"{fields['app_id']}-brands", fields["mentions_topic"], timeout=60)
        )
    finally:
        assert pipeline.stop() == 0, pipeline.log_tail()
        assert brands.stop() == 0, brands.log_tail()
    assert len(outputs.sentiment_posts()) == len(records)
    assert sum(ends.values()) > 0, "the posts mention no brand: nothing was tested"
    assert all(committed.get(p, 0) >= end for p, end in ends.items()), (ends, committed, brands.log_tail())
    pipeline_log = pipeline.log_path.read_text(errors="replace")
    brands_log = brands.log_path.read_text(errors="replace")
    # Faust names each process's agents and tables in its log: the monitor's tables in one, ingest in the other.
    assert "brand-monitor-state" in brands_log and "brand-monitor-state" not in pipeline_log
    assert "register_[.]ingest" in pipeline_log and "register_[.]ingest" not in brands_log
    assert "socialpulse pipeline ready" not in brands_log
