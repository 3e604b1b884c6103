"""Share of voice through the full worker on real Kafka: posts about three brands of a competitor set and one
outside it go through ingest, the brand monitor and the share agent; an independent consumer reads
social.brand_stats and finds one share record per window, with each member's counts equal to its own window
stats and the shares those counts imply; every input record is accounted for and every offset committed."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from stream.brands.synthetic import demo_brands_yaml
from stream.tools.kafka_local import LocalKafka
from stream.tools.sample_posts import labelled_stream, load_tweet_texts
from tests.integration.brand_streams import check_shares, read_shares, read_stats
from tests.integration.harness import Topics, WorkerProcess, produce, read_outputs, wait_for_commits
from tests.integration.worker_fixtures import scrape

MEMBERS = ("Acme", "Globex", "Initech")
WINDOW_MS = 2_000
# Ingest reorders posts (four input partitions, batches sorted by length): a lateness beyond the stream's
# 12 s of event time means no mention is late, so each window's counts are the posts sent. The windows
# then close on the worker's idle ticks.
MONITOR = {
    "SOCIALPULSE_BRANDS_WINDOW_S": str(WINDOW_MS // 1000),
    "SOCIALPULSE_BRANDS_HOP_SIZE_S": "0",
    "SOCIALPULSE_BRANDS_ALLOWED_LATENESS_S": "30",
    "SOCIALPULSE_BRANDS_SHARE_WAIT_WINDOWS": "60",
}


def test_share_of_voice_windows_through_the_worker(kafka: LocalKafka, tmp_path: Path) -> None:
    records = labelled_stream(load_tweet_texts(), 1_200, malformed_share=0.05, seed=15)
    valid = [msgspec.json.decode(r.raw) for r in records if r.expected is None]
    sent = Counter((p["brand"], p["created_at"] - p["created_at"] % WINDOW_MS) for p in valid if "brand" in p)
    windows = {start for brand, start in sent if brand in MEMBERS}
    brands_file = tmp_path / "brands.yaml"
    brands_file.write_text(demo_brands_yaml() + f"competitor_sets:\n  rivals: [{', '.join(MEMBERS)}]\n")
    topics = Topics()
    fields = topics.fields()
    worker = WorkerProcess(
        kafka.bootstrap, topics, tmp_path, "worker", SOCIALPULSE_BRANDS_FILE=str(brands_file), **MONITOR
    ).start()
    try:
        worker.wait_ready()
        asyncio.run(produce(kafka.bootstrap, topics.posts, records))
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(valid), len(records) - len(valid), 300))
        shares = asyncio.run(read_shares(kafka.bootstrap, fields["brand_stats_topic"], windows, timeout=240))
        expect_stats = {(brand, "tumbling", start) for brand, start in sent}
        stats = asyncio.run(
            read_stats(kafka.bootstrap, fields["brand_stats_topic"], 2**62, timeout=60, expect=expect_stats)
        )
        commits = {
            topic: asyncio.run(wait_for_commits(kafka.bootstrap, fields["app_id"], fields[topic], timeout=60))
            for topic in ("input_topic", "mentions_topic", "share_topic")
        }
        gauge = scrape(f"http://127.0.0.1:{worker.metrics_port}/metrics").samples["socialpulse_brand_share_of_voice"]
    finally:
        assert worker.stop() == 0, worker.log_tail()

    # Every record accounted for: each valid post on the outputs, each bad one dead-lettered with its reason,
    # each mention in its brand's window stats, every offset of the three topics committed.
    assert outputs.sentiment_posts().keys() == {str(p["id"]) for p in valid}
    assert Counter(reason for reason, _, _ in outputs.dead_letters) == Counter(
        r.expected.value for r in records if r.expected is not None
    )
    counted = {(key[0], key[2]): s.posts + s.flagged for key, s in stats.items()}
    assert counted == dict(sent), worker.log_tail()
    for topic, (ends, committed) in commits.items():
        assert sum(ends.values()) > 0 and all(committed.get(p, 0) >= end for p, end in ends.items()), topic

    assert len(windows) >= 5
    check_shares(shares, stats, MEMBERS)
    assert all(r.competitor_set == "rivals" and r.window.end == start + WINDOW_MS for start, r in shares.items())
    print(
        f"share of voice: {len(records)} records, {sum(sent.values())} mentions, {len(shares)} windows of "
        f"{', '.join(MEMBERS)}; last: {[(b.brand, round(b.mention_share or 0, 3)) for b in shares[max(shares)].brands]}"
    )
    # The gauge holds the last window's shares, for the set's members only.
    last = shares[max(shares)]
    exported = {(labels["set"], labels["brand"], labels["measure"]): value for labels, value in gauge}
    assert {brand for _, brand, _ in exported} == set(MEMBERS)
    for member in last.brands:
        assert exported[("rivals", member.brand, "mentions")] == pytest.approx(member.mention_share)
        assert exported[("rivals", member.brand, "reach")] == pytest.approx(member.reach_share)
