"""Driving the brand monitor on real Kafka: mention streams from the synthetic posts, the brand-monitor worker
process (`brand_monitor_worker.py`), what an uninterrupted monitor emits for them, and reading outputs back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from stream.brands.backtest import Classification
from stream.brands.model import BrandStats, Output, ShareOfVoice, StoryUpdate
from stream.brands.monitor import BrandMonitor, MonitorConfig
from stream.brands.query import BrandCatalog, post_brands
from stream.brands.stories import StoryTracker
from stream.brands.synthetic import (
    StreamSpec,
    demo_brands_yaml,
    load_rated_tweets,
    synthetic_embedding,
    synthetic_posts,
)
from stream.emit import build_mention
from stream.schema import BrandMention
from stream.settings import Settings
from stream.validate import SourceRef, ValidPost
from stream.worker import build_validator
from tests.integration.harness import REPO_ROOT, Topics, free_port

MINUTE = 60_000
OutputUnion = msgspec.json.Decoder(Output)

# Brands written in unspaced scripts, mentioned inside a run of text (docs/BRANDS.md, matching per script):
# post id -> (language, text, brand).
UNSPACED_POSTS = {
    "zh-huawei": ("zh", "我喜欢华为手机 但是电池不太好", "Huawei"),
    "ja-sony": ("ja", "ソニーのヘッドホンが壊れた", "Sony"),
}


def unspaced_brands_file(folder: Path) -> Path:
    """The demo brands file with the brands of UNSPACED_POSTS added."""
    path = folder / "brands.yaml"
    demo = (REPO_ROOT / "deploy/brands/demo.yaml").read_text(encoding="utf-8")
    path.write_text(demo + "  Huawei: '华为 OR huawei'\n  Sony: 'ソニー OR sony'\n", encoding="utf-8")
    return path


def mentions_for(spec: StreamSpec, embeddings: bool = False) -> list[BrandMention]:
    """With `embeddings`, each mention carries a synthetic one (synthetic.synthetic_embedding), so stories form."""
    validator = build_validator(Settings())
    catalog = BrandCatalog.from_yaml_text(demo_brands_yaml())
    mentions = []
    for n, post in enumerate(synthetic_posts(spec, load_rated_tweets())):
        valid = validator.validate(msgspec.json.encode(post), SourceRef("t", 0, n))
        assert isinstance(valid, ValidPost)
        sentiment = str(post["sentiment"])
        topic = str(post["topic"]) if "topic" in post else None
        embedding = synthetic_embedding(valid.post.id, sentiment, topic) if embeddings else None
        labels = Classification(sentiment, post["sentiment_scores"], post["behaviours"], embedding=embedding)  # type: ignore[arg-type]
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
    """The topics the brand monitor reads and writes, `configs` per topic name (any other topic it names is
    created too)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        own = [
            settings.mentions_topic,
            settings.brand_stats_topic,
            settings.alerts_topic,
            settings.stories_topic,
            settings.share_topic,
            settings.dlq_topic,
        ]
        names = dict.fromkeys([*own, *(configs or {})])
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


def reference_outputs(mentions: list[BrandMention]) -> list[Output]:
    """What an uninterrupted monitor emits for `mentions`, in order."""
    config = MonitorConfig()
    reference = BrandMonitor(config, stories=StoryTracker(config.window_s))
    outputs: list[Output] = []
    for m in mentions:
        outputs += reference.advance(m.created_at) + reference.observe(m)
    return outputs


def expected_stats(mentions: list[BrandMention], until: int) -> dict[tuple[str, str, int], BrandStats]:
    """The stats of windows ending at or before `until` that an uninterrupted monitor emits for `mentions`."""
    return {
        (o.brand, o.window.kind, o.window.start): o
        for o in reference_outputs(mentions)
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


def check_shares(
    shares: Mapping[int, ShareOfVoice], stats: Mapping[tuple[str, str, int], BrandStats], members: Sequence[str]
) -> None:
    """One share record per window in which a member had a tumbling stat, none missing a member, each member's
    counts those of its stat (0 without one), and the shares those counts imply (null where a total is 0)."""
    windows = {start for brand, kind, start in stats if brand in members and kind == "tumbling"}
    assert shares.keys() == windows, (sorted(shares), sorted(windows))
    for start, record in shares.items():
        assert record.missing == [], start
        rows = []
        for brand in members:
            s = stats.get((brand, "tumbling", start))
            rows.append((brand, *((s.posts, s.sentiment.get("negative", 0), s.reach) if s else (0, 0, 0))))
        assert [(b.brand, b.mentions, b.negative, b.reach) for b in record.brands] == rows, start
        for n, measure in enumerate(("mentions", "negative", "reach"), start=1):
            total = sum(row[n] for row in rows)
            assert getattr(record, measure) == total
            values = [getattr(b, f"{measure.removesuffix('s')}_share") for b in record.brands]
            assert values == ([row[n] / total for row in rows] if total else [None] * len(rows)), (start, measure)
            assert (measure in record.empty) == (total == 0)
            if total:
                assert sum(values) == pytest.approx(1.0)


StoryKey = tuple[str, str, int]
K = TypeVar("K")
V = TypeVar("V")


def story_key(update: StoryUpdate) -> StoryKey:
    return (update.story_id, update.event, update.window.start)


async def read_keyed(
    bootstrap: str,
    topic: str,
    pick: Callable[[ConsumerRecord[bytes, bytes]], tuple[K, V] | None],
    expect: set[K],
    timeout: float,
) -> dict[K, V]:
    """The records `pick` keys (None: skipped), deduplicated by key (a record sent twice must be the same), read
    until every key of `expect` is in or at the timeout."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[K, V] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not expect <= found.keys():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if (picked := pick(record)) is not None:
                        key, value = picked
                        assert found.setdefault(key, value) == value, (found[key], value)
    finally:
        await consumer.stop()
    return found


async def read_stories(
    bootstrap: str, topic: str, expect: set[StoryKey], timeout: float
) -> dict[StoryKey, StoryUpdate]:
    """The story records by (story, event, window)."""

    def pick(record: ConsumerRecord[bytes, bytes]) -> tuple[StoryKey, StoryUpdate]:
        update = msgspec.json.decode(record.value or b"", type=StoryUpdate)
        assert record.key == update.brand.encode(), record
        return story_key(update), update

    return await read_keyed(bootstrap, topic, pick, expect, timeout)


async def read_shares(bootstrap: str, topic: str, expect: set[int], timeout: float) -> dict[int, ShareOfVoice]:
    """The share-of-voice records on the stats topic, by window start."""

    def pick(record: ConsumerRecord[bytes, bytes]) -> tuple[int, ShareOfVoice] | None:
        output = OutputUnion.decode(record.value or b"")
        if not isinstance(output, ShareOfVoice):
            return None
        assert record.key == output.competitor_set.encode(), record
        return output.window.start, output

    return await read_keyed(bootstrap, topic, pick, expect, timeout)


async def read_records(bootstrap: str, topic: str, expect: int, timeout: float) -> list[ConsumerRecord[bytes, bytes]]:
    """The topic's records from the start, once `expect` are in or at the timeout."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += records
    finally:
        await consumer.stop()
    return found
