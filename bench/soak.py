"""Soak: the real worker (pipeline + brand monitor) fed a steady stream of real tweets, sampled every minute.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 40] [--sample-s 60] [--warmup-minutes 5] [--json]

One `socialpulse run` (role all, brands from deploy/brands/demo.yaml) on its own uniquely named topics,
fed by `socialpulse replay` at `--rate` posts/s with fresh post ids (none is a duplicate; about 60 % carry
a brand hint and the brand queries match more, so mentions flow to the brand monitor). Each sample takes
the worker's RSS, the lag of its group on the input and mentions topics (end minus committed offset), the
posts delivered and dead-lettered so far (its exporter) and the e2e latency (created_at to acked) of the
interval since the previous sample (its histogram). At the end it waits for every post to come out and
accounts for each: delivered (sentiment and behaviour events read back), dead-lettered, or lost.

RSS growth is (last RSS - RSS at the end of the warm-up) / RSS at the end of the warm-up; the goal is
< 10 %. The broker is SOCIALPULSE_KAFKA_BOOTSTRAP; when nothing serves that 127.0.0.1 port, a local
broker with its state in .cache/kafka-soak is started there and stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.backends.cpu import cpu_features
from stream.settings import REPO_ROOT, Settings
from stream.tools.bench import EventReader, choose_model, delete_run_topics, worker_env
from stream.tools.harness import Topics, WorkerProcess
from stream.tools.kafka_local import LocalKafka
from stream.tools.replay import replay
from stream.tools.sample_posts import labelled_stream, load_tweet_texts, write_jsonl
from stream.web import Buckets, RegistrySnapshot, histogram_quantile, subtract_buckets
from stream.worker import LagProbe, ensure_topics, kafka_admin, topic_partitions

# Progress and samples go to stderr, so `--json` leaves stdout holding the one JSON object.
console = Console(stderr=True)

DEFAULT_BRANDS = REPO_ROOT / "deploy/brands/demo.yaml"
E2E_HISTOGRAM = "socialpulse_e2e_created_latency_seconds"
RSS_GROWTH_GOAL = 0.10
# After the last post is sent: how long the worker may take to finish it, and its commits to reach the end.
DRAIN_TIMEOUT_S = 600.0
COMMIT_TIMEOUT_S = 60.0
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sample:
    elapsed_s: float
    rss_bytes: int
    sent: int
    delivered: int
    dead_letters: int
    input_lag: int
    mentions_lag: int
    # e2e latency of the posts acked since the previous sample; None when there were none.
    p50_ms: float | None
    p99_ms: float | None
    e2e_buckets: Buckets = field(repr=False)

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "e2e_buckets"}


def _ms(q: float, buckets: Buckets) -> float | None:
    seconds = histogram_quantile(q, buckets)
    return None if seconds is None else 1000 * seconds


class Sampler:
    """RSS from psutil, lag from the group's committed offsets, counters and latency from the exporter."""

    def __init__(self, worker: WorkerProcess, settings: Settings, started: float) -> None:
        assert worker.process is not None
        self._worker = worker
        self._process = psutil.Process(worker.process.pid)
        self._settings = settings
        self._probe = LagProbe(settings)
        self._started = started
        self._url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
        self._previous: Buckets = []

    async def start(self) -> None:
        await self._probe.start()

    async def stop(self) -> None:
        await self._probe.stop()

    def scrape(self) -> RegistrySnapshot:
        return RegistrySnapshot.fetch(self._url)

    def check_alive(self) -> None:
        assert self._worker.process is not None
        if self._worker.process.poll() is not None:
            raise RuntimeError(
                f"the worker exited ({self._worker.process.returncode}); log tail:\n{self._worker.log_tail()}"
            )

    async def sample(self, sent: int) -> Sample:
        self.check_alive()
        snap = await asyncio.to_thread(self.scrape)
        # The worker runs no child processes; its own RSS is the whole of it.
        rss = self._process.memory_info().rss
        input_lag = sum((await self._probe.measure()).values())
        mentions_lag = sum((await self._probe.measure(self._settings.mentions_topic)).values())
        buckets = snap.buckets(E2E_HISTOGRAM)
        interval = subtract_buckets(buckets, self._previous)
        self._previous = buckets
        return Sample(
            elapsed_s=time.monotonic() - self._started,
            rss_bytes=rss,
            sent=sent,
            delivered=int(snap.total("socialpulse_posts_delivered_total")),
            dead_letters=int(snap.total("socialpulse_dlq_records_total")),
            input_lag=input_lag,
            mentions_lag=mentions_lag,
            p50_ms=_ms(0.5, interval),
            p99_ms=_ms(0.99, interval),
            e2e_buckets=buckets,
        )

    async def wait_accounted(self, sent: int, timeout: float) -> RegistrySnapshot:
        """Until every sent post is delivered or dead-lettered, by the worker's own counters."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            snap = await asyncio.to_thread(self.scrape)
            done = snap.total("socialpulse_posts_delivered_total") + snap.total("socialpulse_dlq_records_total")
            if done >= sent or time.monotonic() > deadline:
                return snap
            await asyncio.sleep(1.0)

    async def wait_committed(self, timeout: float) -> None:
        """Until the group's committed offsets reach the end of the input and mentions topics."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lags = [
                *(await self._probe.measure()).values(),
                *(await self._probe.measure(self._settings.mentions_topic)).values(),
            ]
            if not any(lags):
                return
            await asyncio.sleep(1.0)


def ensure_broker(bootstrap: str) -> LocalKafka | None:
    """Start a local broker when nothing serves a 127.0.0.1 bootstrap yet; returns it, to stop at the end."""
    host, port = bootstrap.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return None
    except OSError:
        pass
    kafka = LocalKafka(REPO_ROOT / ".cache/kafka-soak", int(port))
    with console.status(f"starting a local Kafka at {bootstrap} (state in {kafka.state_dir})"):
        kafka.start()
    return kafka


async def topic_records(settings: Settings, topic: str) -> int:
    """Records in a topic: end minus beginning offsets (the run's topics are fresh and never compacted)."""
    async with kafka_admin(settings) as admin:
        partitions = await topic_partitions(admin, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **settings.kafka_client_options)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        return sum(ends[tp] - starts[tp] for tp in partitions)
    finally:
        await consumer.stop()


async def soak(minutes: float, rate: float, sample_s: float, warmup_minutes: float, brands: Path) -> dict[str, Any]:
    # Producing right after topic creation logs a retried NotLeaderForPartition per partition: noise here.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    settings = Settings()
    model = choose_model(settings, "int8")
    topics = Topics(prefix=f"soak{uuid.uuid4().hex[:8]}")
    run_settings = settings.model_copy(update={**topics.fields(), "role": "all", "brands_file": brands})
    log_dir = REPO_ROOT / ".cache/bench" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir.mkdir(parents=True, exist_ok=True)

    total = round(minutes * 60 * rate)
    # Ids unique per run (the seed is in each id), so no post is dead-lettered as an earlier run's duplicate.
    records = labelled_stream(load_tweet_texts(), total, malformed_share=0, seed=int(time.time()))
    posts_file = write_jsonl(records, log_dir / "posts.jsonl")
    ids = {record.post_id for record in records}
    del records

    await ensure_topics(run_settings)
    env = worker_env(settings, model.variant, "auto") | {
        "SOCIALPULSE_ROLE": "all",
        "SOCIALPULSE_BRANDS_FILE": str(brands),
        # Faust's state of this run stays with its logs instead of piling up in .cache/faust.
        "SOCIALPULSE_DATA_DIR": str(log_dir / "faust"),
    }
    worker = WorkerProcess(settings.kafka_bootstrap, topics, log_dir, "soak-worker", **env)
    reader = EventReader(settings.kafka_bootstrap, (topics.sentiment, topics.behaviour), settings.kafka_client_options)
    await reader.start()
    worker.start()
    sampler: Sampler | None = None
    try:
        with console.status("starting the worker"):
            await asyncio.to_thread(worker.wait_ready, 300.0)
        started = time.monotonic()
        sampler = Sampler(worker, run_settings, started)
        await sampler.start()
        samples = await run_samples(sampler, posts_file, topics, settings, total, rate, sample_s)
        last_sent = time.monotonic()
        with console.status("waiting for the last posts to come out"):
            final = await sampler.wait_accounted(total, DRAIN_TIMEOUT_S)
            drain_s = time.monotonic() - last_sent
            await sampler.wait_committed(COMMIT_TIMEOUT_S)
            samples.append(await sampler.sample(total))
            await _until_read(reader, ids, timeout=120.0)
        delivered = reader.complete(ids)
        sentiment_records = await topic_records(run_settings, topics.sentiment)
        dead_letters = await topic_records(run_settings, topics.dlq)
        mentions = await topic_records(run_settings, run_settings.mentions_topic)
    finally:
        if sampler is not None:
            await sampler.stop()
        await reader.stop()
        exit_code = worker.stop()
        await delete_run_topics(settings, topics.prefix)
    return report(
        minutes=minutes,
        rate=rate,
        sample_s=sample_s,
        warmup_minutes=warmup_minutes,
        samples=samples,
        sent=total,
        delivered=delivered,
        dead_letters=dead_letters,
        dlq_by_reason=final.by_label("socialpulse_dlq_records_total", "reason"),
        duplicates=sentiment_records - len(reader.seen[topics.sentiment]),
        mentions=mentions,
        drain_s=drain_s,
        exit_code=exit_code,
        model=f"{model.manifest.name} {model.manifest.version} {model.variant}",
        log_dir=log_dir,
    )


async def _until_read(reader: EventReader, ids: set[str], timeout: float) -> None:
    """The reader trails the worker's acks by a fetch or two; a post still missing after that is lost."""
    deadline = time.monotonic() + timeout
    while reader.complete(ids) < len(ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)


async def run_samples(
    sampler: Sampler, posts_file: Path, topics: Topics, settings: Settings, total: int, rate: float, sample_s: float
) -> list[Sample]:
    """Replay the posts at `rate`, sampling every `sample_s` until the last is sent."""
    sent = 0
    progress = Progress(
        TextColumn("soak"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )

    def on_sent(count: int) -> None:
        nonlocal sent
        sent = count
        progress.update(task, completed=count)

    samples: list[Sample] = []
    with progress:
        task = progress.add_task("soak", total=total, last="")
        sending = asyncio.create_task(
            replay(
                posts_file,
                topics.posts,
                settings.kafka_bootstrap,
                rate,
                retime=True,
                show_progress=False,
                client_options=settings.kafka_client_options,
                on_sent=on_sent,
            )
        )
        next_at = time.monotonic()
        try:
            while not sending.done():
                sample = await sampler.sample(sent)
                samples.append(sample)
                line = describe(sample)
                progress.update(task, last=line)
                progress.console.print(line)
                next_at += sample_s
                await asyncio.wait({sending}, timeout=max(0.0, next_at - time.monotonic()))
            await sending
        finally:
            sending.cancel()
    return samples


def describe(sample: Sample) -> str:
    p50 = "-" if sample.p50_ms is None else f"{sample.p50_ms:,.0f}"
    p99 = "-" if sample.p99_ms is None else f"{sample.p99_ms:,.0f}"
    return (
        f"{sample.elapsed_s / 60:5.1f} min  rss {sample.rss_bytes / MB:,.1f} MB  sent {sample.sent:,}"
        f"  delivered {sample.delivered:,}  dlq {sample.dead_letters:,}"
        f"  lag in {sample.input_lag:,} / mentions {sample.mentions_lag:,}  e2e p50 {p50} p99 {p99} ms"
    )


def report(
    *,
    minutes: float,
    rate: float,
    sample_s: float,
    warmup_minutes: float,
    samples: list[Sample],
    sent: int,
    delivered: int,
    dead_letters: int,
    dlq_by_reason: dict[str, float],
    duplicates: int,
    mentions: int,
    drain_s: float,
    exit_code: int,
    model: str,
    log_dir: Path,
) -> dict[str, Any]:
    first, last = samples[0], samples[-1]
    # The first sample at or after the end of the warm-up; none when the run is not longer than it.
    warm = next((s for s in samples if s.elapsed_s >= warmup_minutes * 60), None)
    after = [s for s in samples if warm is not None and s.elapsed_s >= warm.elapsed_s]
    growth = (last.rss_bytes - warm.rss_bytes) / warm.rss_bytes if warm is not None and warm is not last else None
    e2e = subtract_buckets(last.e2e_buckets, warm.e2e_buckets) if warm is not None else last.e2e_buckets
    span_s = last.elapsed_s - warm.elapsed_s if warm is not None else 0.0
    cpu = cpu_features()
    return {
        "minutes": minutes,
        "rate_posts_per_s": rate,
        "sample_s": sample_s,
        "warmup_minutes": warmup_minutes,
        "posts_sent": sent,
        "posts_delivered": delivered,
        "dead_letters": dead_letters,
        "dlq_by_reason": dlq_by_reason,
        "lost": sent - delivered - dead_letters,
        "duplicate_sentiment_events": duplicates,
        "mention_records": mentions,
        "rss_start_mb": first.rss_bytes / MB,
        "rss_warm_mb": warm.rss_bytes / MB if warm is not None else None,
        "rss_last_mb": last.rss_bytes / MB,
        "rss_max_mb": max(s.rss_bytes for s in samples) / MB,
        "rss_growth": growth,
        "rss_growth_goal": RSS_GROWTH_GOAL,
        "rss_growth_ok": growth is not None and growth < RSS_GROWTH_GOAL,
        "rss_growth_mb_per_min": (last.rss_bytes - warm.rss_bytes) / MB / (span_s / 60) if warm and span_s else None,
        "max_input_lag": max(s.input_lag for s in samples),
        "max_mentions_lag": max(s.mentions_lag for s in samples),
        "max_input_lag_after_warmup": max((s.input_lag for s in after), default=None),
        "max_mentions_lag_after_warmup": max((s.mentions_lag for s in after), default=None),
        "e2e_p50_ms_after_warmup": _ms(0.5, e2e),
        "e2e_p99_ms_after_warmup": _ms(0.99, e2e),
        "delivered_posts_per_s_after_warmup": (last.delivered - warm.delivered) / span_s if warm and span_s else None,
        "drain_s": drain_s,
        "worker_exit_code": exit_code,
        "samples": [s.row() for s in samples],
        "model": model,
        "cpu": cpu["model"],
        "cpu_count": os.cpu_count(),
        "logs": str(log_dir),
    }


def render(result: dict[str, Any]) -> Table:
    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f} MB"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} ms"

    table = Table(title=f"socialpulse soak: {result['minutes']:g} min at {result['rate_posts_per_s']:g} posts/s")
    for column in ("min", "RSS", "sent", "delivered", "DLQ", "lag input", "lag mentions", "e2e p50", "e2e p99"):
        table.add_column(column, justify="right")
    for s in result["samples"]:
        table.add_row(
            f"{s['elapsed_s'] / 60:.1f}",
            mb(s["rss_bytes"] / MB),
            f"{s['sent']:,}",
            f"{s['delivered']:,}",
            f"{s['dead_letters']:,}",
            f"{s['input_lag']:,}",
            f"{s['mentions_lag']:,}",
            ms(s["p50_ms"]),
            ms(s["p99_ms"]),
        )
    growth = result["rss_growth"]
    verdict = (
        "-" if growth is None else f"{growth:+.1%} ({'under' if result['rss_growth_ok'] else 'over'} the 10 % goal)"
    )
    summary = Table(show_header=False)
    summary.add_row(
        "RSS start / end of warm-up / last / max",
        " / ".join(mb(result[key]) for key in ("rss_start_mb", "rss_warm_mb", "rss_last_mb", "rss_max_mb")),
    )
    summary.add_row(f"RSS growth after the {result['warmup_minutes']:g}-minute warm-up", verdict)
    summary.add_row("max lag, input / mentions", f"{result['max_input_lag']:,} / {result['max_mentions_lag']:,}")
    summary.add_row(
        "e2e after the warm-up",
        f"p50 {ms(result['e2e_p50_ms_after_warmup'])}  p99 {ms(result['e2e_p99_ms_after_warmup'])}",
    )
    summary.add_row(
        "posts sent / delivered / dead-lettered / lost",
        f"{result['posts_sent']:,} / {result['posts_delivered']:,} / {result['dead_letters']:,} / {result['lost']:,}",
    )
    summary.add_row("duplicate sentiment events", f"{result['duplicate_sentiment_events']:,}")
    summary.add_row("brand mention records", f"{result['mention_records']:,}")
    summary.add_row(
        "drain after the last send", f"{result['drain_s']:,.1f} s; worker exit code {result['worker_exit_code']}"
    )
    summary.add_row("model / cpu", f"{result['model']} / {result['cpu']} ({result['cpu_count']} cores)")
    summary.add_row("logs", result["logs"])
    outer = Table.grid()
    outer.add_row(table)
    outer.add_row(summary)
    return outer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long posts are sent (default 30)")
    parser.add_argument("--rate", type=float, default=40.0, help="posts/s (default 40)")
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--warmup-minutes", type=float, default=5.0, help="RSS growth is measured after it")
    parser.add_argument("--brands", type=Path, default=DEFAULT_BRANDS, help="the worker's brands file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    settings = Settings()
    kafka = ensure_broker(settings.kafka_bootstrap)
    try:
        result = asyncio.run(soak(args.minutes, args.rate, args.sample_s, args.warmup_minutes, args.brands.resolve()))
    finally:
        if kafka is not None:
            kafka.stop()
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        Console().print(render(result))


if __name__ == "__main__":
    main()
