"""The brand monitor agent on real Kafka: a worker SIGKILLed mid-window and restarted (from its changelogs as
written, or after the broker compacted them) ends with the same window aggregates as the same mentions run
uninterrupted through BrandMonitor (what the backtest runs); a topic burst publishes its story and the
crisis alert names it; and inside the full worker, beside ingest, it commits the mentions it has handled
(brands matched in English, Chinese and Japanese posts)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from stream.brands.agent import TICK_KEY
from stream.brands.model import Alert, StoryUpdate
from stream.brands.synthetic import BRANDS, Burst, StreamSpec, demo_brands_yaml
from stream.schema import BrandMention
from stream.tools.kafka_local import LocalKafka
from stream.tools.sample_posts import LabelledRecord, labelled_stream, load_tweet_texts
from stream.worker import topic_partitions
from tests.integration.brand_streams import (
    MINUTE,
    UNSPACED_POSTS,
    brand_env,
    check_shares,
    create_topics,
    expected_stats,
    mentions_for,
    produce,
    produce_raw,
    read_records,
    read_shares,
    read_stats,
    read_stories,
    reference_outputs,
    start_worker,
    story_key,
    unspaced_brands_file,
    with_sentinels,
)
from tests.integration.harness import REPO_ROOT, Topics, WorkerProcess, read_outputs, wait_for_commits
from tests.integration.harness import produce as produce_posts

# Changelogs the broker compacts within seconds: a segment per flush, any dirt makes a segment cleanable.
EAGER_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
}
BRAND_TABLES = (
    "brand-monitor-state",
    "brand-monitor-authors",
    "brand-monitor-stories",
    "brand-monitor-partitions",
    "brand-share-state",
)


async def records_and_offsets(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records the topic holds, offsets it spans): fewer records than offsets once compaction removed some."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        partitions = await topic_partitions(admin, topic)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        starts, ends = await consumer.beginning_offsets(partitions), await consumer.end_offsets(partitions)
        held = 0
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            held += sum(len(batch) for batch in (await consumer.getmany(timeout_ms=500)).values())
        return held, sum(ends.values()) - sum(starts.values())
    finally:
        await consumer.stop()


async def wait_for_compaction(bootstrap: str, topic: str, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        held, spanned = await records_and_offsets(bootstrap, topic)
        if held < spanned or time.monotonic() > deadline:
            return held, spanned
        await asyncio.sleep(2)


async def wait_for_line(log: Path, marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while marker not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {marker!r} in {log}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("compacted", [False, True], ids=["changelog-as-written", "changelog-compacted"])
async def test_kill_and_restart_mid_window_gives_the_uninterrupted_aggregates(
    kafka: LocalKafka, tmp_path: Path, compacted: bool
) -> None:
    """With `compacted`, the broker compacts the changelogs before the restart: what the second worker restores
    is the latest value of every key, with the superseded ones (and their offsets) gone, as after retention.
    The worker dies in a topic burst too: its stories go on as in the uninterrupted run. The four brands are a
    competitor set: their share of voice is that of the uninterrupted run's window stats."""
    bursts = [Burst("Acme", 5.0, minutes=2, topic="double_charge"), Burst("Acme", 8.0, minutes=2)]
    spec = StreamSpec(minutes=12, seed=3, per_minute=15, bursts=bursts)
    mentions = mentions_for(spec, embeddings=True)
    stream, end = with_sentinels(mentions)
    expected = expected_stats(stream, end + 10 * MINUTE)
    stories = {story_key(u): u for u in reference_outputs(stream) if isinstance(u, StoryUpdate)}
    env, settings = brand_env(kafka.bootstrap)
    brands_file = tmp_path / "brands.yaml"
    brands_file.write_text(demo_brands_yaml() + f"competitor_sets:\n  demo: [{', '.join(BRANDS)}]\n")
    # Every brand is mentioned from the first minute: no window waits on a member that never reported.
    env |= {"SOCIALPULSE_BRANDS_FILE": str(brands_file), "SOCIALPULSE_BRANDS_SHARE_WAIT_WINDOWS": "1000"}
    changelogs = [f"{settings.app_id}-{table}-changelog" for table in BRAND_TABLES]
    await create_topics(kafka.bootstrap, settings, dict.fromkeys(changelogs, EAGER_COMPACTION) if compacted else {})

    # Cut in the middle of a window: the worker holds a half-filled window when it dies.
    cut = next(i for i, m in enumerate(mentions) if m.created_at >= spec.start_ms + 6 * MINUTE + 30_000)
    log = tmp_path / "worker.log"
    if not compacted:
        await produce(kafka.bootstrap, settings.mentions_topic, mentions[:cut])
    first = start_worker(env, log)
    try:
        if compacted:
            # In installments, so the states are flushed several times over segments of their own: the
            # cleaner only drops a value that a later one outside the active segment supersedes.
            await wait_for_line(log, "[^Worker]: Ready", timeout=120)
            for start in range(0, cut, cut // 6 + 1):
                await produce(
                    kafka.bootstrap, settings.mentions_topic, mentions[start : min(cut, start + cut // 6 + 1)]
                )
                await asyncio.sleep(1.5)
        await read_stats(kafka.bootstrap, settings.brand_stats_topic, spec.start_ms + 5 * MINUTE, timeout=120)
        await asyncio.sleep(3)  # let it take in the rest of what was produced
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    if compacted:
        # The cleaner looks every 15 s (log.cleaner.backoff.ms); the brand states are rewritten every flush.
        held, spanned = await wait_for_compaction(kafka.bootstrap, changelogs[0], timeout=120)
        assert held < spanned, f"{changelogs[0]} was not compacted: {held} records over {spanned} offsets"
        print(f"brand-state changelog compacted before the restore: {held} records over {spanned} offsets")

    await produce(kafka.bootstrap, settings.mentions_topic, stream[cut:])
    second = start_worker(env, log)
    try:
        found = await read_stats(
            kafka.bootstrap, settings.brand_stats_topic, end + 10 * MINUTE, timeout=180, expect=set(expected)
        )
        found_stories = await read_stories(kafka.bootstrap, settings.stories_topic, set(stories), timeout=60)
        windows = {start for (_, kind, start) in expected if kind == "tumbling"}
        shares = await read_shares(kafka.bootstrap, settings.brand_stats_topic, windows, timeout=60)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=60)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert set(found) == set(expected), tail
    assert found == expected, tail
    # The sentinels' windows close only on an idle tick, if the test lasts that long: they are not compared.
    check_shares({w: r for w, r in shares.items() if r.window.end <= end + 10 * MINUTE}, expected, BRANDS)
    assert any(u.event == "born" for u in stories.values()), "no story formed: nothing was tested"
    assert found_stories == stories, tail


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
        letters = [
            {**dict(r.headers), "value": r.value or b""}
            for r in await read_records(kafka.bootstrap, settings.dlq_topic, expect=2, timeout=30)
        ]
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


async def test_a_topic_burst_publishes_its_story_and_the_crisis_alert_names_it(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    # After the 15 warm-up windows the monitor needs before it alerts.
    spec = StreamSpec(minutes=24, seed=4, per_minute=15, bursts=[Burst("Acme", 18.0, minutes=2, topic="double_charge")])
    stream, _ = with_sentinels(mentions_for(spec, embeddings=True))
    reference = reference_outputs(stream)
    expected = {story_key(u): u for u in reference if isinstance(u, StoryUpdate)}
    expected_alerts = [a for a in reference if isinstance(a, Alert)]
    env, settings = brand_env(kafka.bootstrap)
    await create_topics(kafka.bootstrap, settings)
    await produce(kafka.bootstrap, settings.mentions_topic, stream)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        stories = await read_stories(kafka.bootstrap, settings.stories_topic, set(expected), timeout=180)
        alerts = await read_records(kafka.bootstrap, settings.alerts_topic, expect=len(expected_alerts), timeout=60)
        ends, committed = await wait_for_commits(
            kafka.bootstrap, env["SOCIALPULSE_APP_ID"], settings.mentions_topic, 30
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert stories == expected, tail
    crisis = [a for a in (msgspec.json.decode(r.value or b"", type=Alert) for r in alerts) if a.kind == "crisis"]
    assert crisis == [a for a in expected_alerts if a.kind == "crisis"] and crisis, tail
    firing = crisis[0]
    burst_start = spec.start_ms + 18 * MINUTE
    (born,) = [u for u in stories.values() if u.event == "born" and u.window.start >= burst_start]
    assert firing.stories and firing.stories[0].story_id == born.story_id, (firing, born)
    assert firing.stories[0].negative_share == 1.0 and firing.stories[0].posts >= 10
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


async def test_a_worker_joining_and_one_leaving_while_mentions_flow_give_the_uninterrupted_aggregates(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """Rebalance under load: a second worker joins a third of the way in (partitions move to it mid-window),
    the first leaves (SIGTERM) two thirds in, and the mentions keep coming throughout."""
    spec = StreamSpec(minutes=12, seed=8, per_minute=15, bursts=[Burst("Acme", 6.0, minutes=2)])
    stream, end = with_sentinels(mentions_for(spec))
    expected = expected_stats(stream, end + 10 * MINUTE)
    env, settings = brand_env(kafka.bootstrap)
    await create_topics(kafka.bootstrap, settings)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    workers = [start_worker(env, logs[0])]
    installments = 9
    size = len(stream) // installments + 1
    try:
        await wait_for_line(logs[0], "[^Worker]: Ready", timeout=120)
        for n in range(installments):
            if n == installments // 3:
                workers.append(start_worker(env, logs[1]))
            if n == 2 * installments // 3:
                os.killpg(workers[0].pid, signal.SIGTERM)
            await produce(kafka.bootstrap, settings.mentions_topic, stream[n * size : (n + 1) * size])
            await asyncio.sleep(1.5)
        assert workers[0].wait(timeout=60) == 0, logs[0].read_text(errors="replace")[-3000:]
        found = await read_stats(
            kafka.bootstrap, settings.brand_stats_topic, end + 10 * MINUTE, timeout=180, expect=set(expected)
        )
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)
    tail = "\n".join(logs[1].read_text(errors="replace").splitlines()[-40:])
    assert set(found) == set(expected), tail
    assert found == expected, tail
    print(f"rebalance under load: {len(stream)} mentions, {len(found)} window stats equal an uninterrupted run")


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
    # A Chinese and a Japanese post mention brands inside unspaced text; no model declares ja (the worker
    # dead-letters it as unsupported_language by default), so every language is served here.
    topics = Topics()
    records = labelled_stream(load_tweet_texts(), 300, malformed_share=0.0, seed=5)
    for post_id, (lang, text, _) in UNSPACED_POSTS.items():
        post = {"id": post_id, "text": text, "created_at": 1_795_860_100_000, "author": {"id": "u", "followers": 1}}
        records.append(LabelledRecord(msgspec.json.encode({**post, "platform": "x", "lang": lang}), post_id, None))
    worker = WorkerProcess(
        kafka.bootstrap,
        topics,
        tmp_path,
        "worker",
        SOCIALPULSE_BRANDS_FILE=str(unspaced_brands_file(tmp_path)),
        SOCIALPULSE_LANGUAGES="[]",
    ).start()
    try:
        worker.wait_ready()
        asyncio.run(produce_posts(kafka.bootstrap, topics.posts, records))
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(records), 0, timeout=300))
        fields = topics.fields()
        ends, committed = asyncio.run(
            wait_for_commits(kafka.bootstrap, fields["app_id"], fields["mentions_topic"], timeout=30)
        )
        mentions = asyncio.run(read_records(kafka.bootstrap, fields["mentions_topic"], sum(ends.values()), 60))
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert len(outputs.sentiment_posts()) == len(records) and not outputs.dead_letters, outputs.dead_letters
    assert sum(ends.values()) > 0, "the posts mention no brand: nothing was tested"
    assert all(committed.get(p, 0) >= end for p, end in ends.items()), (ends, committed, worker.log_tail())
    decoded = [msgspec.json.decode(m.value or b"", type=BrandMention) for m in mentions if m.key != TICK_KEY]
    unspaced = {(m.post_id, m.brand, m.language) for m in decoded if m.post_id in UNSPACED_POSTS}
    assert unspaced == {(post_id, brand, lang) for post_id, (lang, _, brand) in UNSPACED_POSTS.items()}


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
