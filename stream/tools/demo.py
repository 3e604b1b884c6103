"""`socialpulse demo`: local Kafka, the real rated tweets replayed live, the worker, a live summary, clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from models.manifest import MANIFEST_FILE
from stream.settings import REPO_ROOT, Settings
from stream.tools.kafka_local import LocalKafka
from stream.tools.replay import replay
from stream.tools.sample_posts import NegativeBurst, held_out_mix, labelled_stream, load_tweet_texts, write_jsonl

console = Console()

# The brand monitor's defaults need 15 one-minute windows of baseline before a first alert; the replay
# lasts about 90 s. Five-second windows (the user's SOCIALPULSE_BRANDS_* win) let the burst below fire a
# crisis and, once it passes, resolve it, while the demo runs.
DEMO_MONITOR = {
    "SOCIALPULSE_BRANDS_WINDOW_S": "5",
    "SOCIALPULSE_BRANDS_HOP_SIZE_S": "0",
    "SOCIALPULSE_BRANDS_ALLOWED_LATENESS_S": "5",
    "SOCIALPULSE_BRANDS_WARMUP_WINDOWS": "6",
}
DEMO_BURST_BRAND = "Globex"
# Each of Chinese and Spanish (held-out posts, never trained on) takes this share of the replay when the
# multilingual model serves them.
DEMO_LANGUAGE_SHARE = 0.1
# Replayed posts not yet out of the worker, in seconds of the replay rate, beyond which the replay waits.
# On a CPU that drains slower than the rate (an AVX2-only EPYC served 27 posts/s of the 60 asked, and
# latency grew to 29 s at p99) the demo then shows the latency of a worker that keeps up, at its own
# rate, instead of a growing backlog.
DEMO_MAX_AHEAD_S = 1.0


def ensure_models(settings: Settings) -> None:
    """Build the default model, and the multilingual one unless routing is off, where they are missing."""
    recipes = [(settings.model_dir, "default")]
    if settings.multilingual_model_dir is not None:
        recipes.append((settings.multilingual_model_dir, "multilingual"))
    for folder, recipe in recipes:
        if not (folder / MANIFEST_FILE).is_file():
            console.print(f"[yellow]no model at {folder}; building the {recipe} model (one time)[/]")
            command = [sys.executable, "-m", "stream", "models", "build", "--recipe", recipe]
            subprocess.run(command, cwd=REPO_ROOT, check=True)


def fetch_summary(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/summary", timeout=2) as response:
            summary: dict[str, Any] = orjson.loads(response.read())
            return summary
    except OSError:
        return None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"


def render(summary: dict[str, Any] | None, sent: int, total: int) -> Group:
    table = Table(title="socialpulse live", show_header=False, min_width=60)
    if summary is None:
        table.add_row("worker", "starting...")
        return Group(table)
    created = summary["latency_seconds"]["created"]["since_start"]
    ingest = summary["latency_seconds"]["ingest"]["since_start"]
    table.add_row("replayed", f"{sent:,} / {total:,}")
    table.add_row("consumed", f"{summary['posts_consumed_total']:,.0f}")
    table.add_row("throughput", f"{summary['throughput_posts_per_s']:,.0f} posts/s")
    table.add_row("e2e latency (created -> acked)", f"p50 {_ms(created['p50'])}  p99 {_ms(created['p99'])}")
    table.add_row("in-worker latency (ingest -> acked)", f"p50 {_ms(ingest['p50'])}  p99 {_ms(ingest['p99'])}")
    table.add_row("delivered (all events acked)", f"{summary['posts_delivered_total']:,.0f}")
    dlq = ", ".join(f"{reason} {count:.0f}" for reason, count in sorted(summary["dlq_by_reason"].items()))
    table.add_row("dead letters", f"{summary['dlq_records_total']:,.0f}  ({dlq or 'none'})")
    for model in summary.get("models", []):
        table.add_row(
            f"model for {model.get('languages', '?')}",
            " ".join(str(model.get(key, "?")) for key in ("name", "version", "variant", "provider")),
        )
    brands = Table(title=f"sentiment by brand (last {summary['sentiment_window_s']} s)")
    for column in ("brand", "negative", "neutral", "positive"):
        brands.add_column(column, justify="right" if column != "brand" else "left")
    for brand, mix in sorted(summary["sentiment_by_brand"].items()):
        brands.add_row(brand, *(str(mix.get(label, 0)) for label in ("negative", "neutral", "positive")))
    return Group(table, brands, render_languages(summary), render_alerts(summary.get("alerts", [])))


def render_languages(summary: dict[str, Any]) -> Table:
    """Delivered posts per language over the live window, and the model that serves each."""
    models = summary.get("models", [])
    serving = {lang: m.get("name", "?") for m in models for lang in m.get("languages", "").split(",")}
    # A language no model declares (served when SOCIALPULSE_LANGUAGES is []) goes to the last one.
    last = models[-1].get("name", "?") if models else "-"
    mix: dict[str, int] = summary.get("language_mix", {})
    total = sum(mix.values()) or 1
    table = Table(title=f"language mix (last {summary['sentiment_window_s']} s)")
    for column in ("language", "posts", "share", "model"):
        table.add_column(column, justify="left" if column in ("language", "model") else "right")
    for lang, posts in sorted(mix.items(), key=lambda item: -item[1]):
        table.add_row(lang, f"{posts:,}", f"{posts / total:.0%}", serving.get(lang, last))
    return table


def render_alerts(alerts: list[dict[str, Any]]) -> Table:
    table = Table(title="brand alerts (newest first)")
    for column in ("status", "brand", "kind", "signal", "example"):
        table.add_column(column)
    if not alerts:
        table.add_row("-", "", "none yet: brands are building their baselines", "", "")
    for alert in alerts[:5]:
        style = "green" if alert["status"] == "resolved" else "bold red"
        stories = alert.get("stories", [])
        example = (
            f"story: '{stories[0]['label']}'" if stories else next((e["text"] for e in alert.get("examples", [])), "")
        )
        table.add_row(
            f"[{style}]{alert['status']}[/]",
            alert["brand"],
            alert["kind"],
            f"{alert['metric']} {alert['observed']:.2f} vs {alert['baseline_mean']:.2f}, z {alert['z']:.1f}",
            example[:70],
        )
    return table


def run_demo(rate: float, malformed_share: float, keep_kafka: bool) -> dict[str, Any]:
    settings = Settings()
    kafka = LocalKafka(port=int(settings.kafka_bootstrap.rsplit(":", 1)[1]))
    was_running = kafka.is_running()
    console.print(f"[bold]1/4[/] Kafka at {kafka.start()}")
    ensure_models(settings)
    texts = load_tweet_texts()
    burst = NegativeBurst(DEMO_BURST_BRAND, load_tweet_texts(max_score=-1.0))
    languages = held_out_mix(DEMO_LANGUAGE_SHARE) if settings.multilingual_model_dir is not None else []
    # Ids unique per run, so a second demo is not dead-lettered as duplicates of the first.
    records = labelled_stream(
        texts, len(texts), malformed_share=malformed_share, seed=int(time.time()), burst=burst, languages=languages
    )
    posts_file = write_jsonl(records, REPO_ROOT / ".cache/data/demo-posts.jsonl")
    mixed = "".join(f", {mix.share:.0%} held-out {mix.lang} posts" for mix in languages)
    console.print(
        f"[bold]2/4[/] {len(records):,} posts from the human-rated tweets{mixed} "
        f"({malformed_share:.0%} malformed; from {burst.start:.0%} to {burst.end:.0%} of the way, a burst of "
        f"negative posts about {burst.brand}) -> {posts_file}"
    )
    app_id = os.environ.get("SOCIALPULSE_APP_ID", "socialpulse-demo")
    skipped = asyncio.run(skip_unprocessed(settings, app_id))
    if skipped:
        console.print(f"skipped {skipped:,} records an earlier demo left unprocessed in {settings.input_topic}")
    env = {
        "SOCIALPULSE_APP_ID": app_id,
        "SOCIALPULSE_BRANDS_FILE": str(REPO_ROOT / "deploy/brands/demo.yaml"),
        **DEMO_MONITOR,
        **os.environ,
    }
    log_path = REPO_ROOT / ".cache/demo-worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "stream", "run"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    console.print(
        f"[bold]3/4[/] worker started (log: {log_path}); live page http://{settings.web_host}:{settings.web_port}/"
    )
    try:
        while fetch_summary(settings.web_port) is None or "pipeline ready" not in log_path.read_text(errors="replace"):
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited early; see {log_path}")
            time.sleep(0.5)
        baseline = fetch_summary(settings.web_port) or {}
        progress = {"sent": 0, "out": 0}
        console.print(
            f"[bold]4/4[/] replaying at up to {rate:,.0f} posts/s "
            f"(held back while more than {DEMO_MAX_AHEAD_S:g} s of posts are still in the worker)"
        )
        summary: dict[str, Any] | None = None
        with Live(render(None, 0, len(records)), console=console, refresh_per_second=2) as live:
            replay_task = _start_replay(posts_file, settings, rate, progress)
            while True:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited during the replay; see {log_path}")
                summary = fetch_summary(settings.web_port)
                if summary:
                    progress["out"] = _out_of_worker(summary, baseline)
                live.update(render(summary, progress["sent"], len(records)))
                if replay_task.done() and summary and progress["out"] >= len(records):
                    break
                time.sleep(0.25)
            replay_task.result()
        return summary or {}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # A worker left running would hold the demo's group and ports, and fail the next demo.
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        if not keep_kafka and not was_running:
            kafka.stop()


async def skip_unprocessed(settings: Settings, group_id: str) -> int:
    """Commit the demo group at the end of the input topic; returns the records skipped.

    The demo counts and times the posts it replays itself: records an interrupted earlier demo left
    unprocessed would be consumed first, counted as this run's, and end the demo before its own posts.
    Runs before the worker starts, while the group has no members (the broker refuses the commit otherwise).
    """
    from aiokafka import AIOKafkaConsumer

    from stream.worker import kafka_admin, topic_partitions

    async with kafka_admin(settings) as admin:
        topic = settings.input_topic
        if topic not in await admin.list_topics():
            return 0
        partitions = await topic_partitions(admin, topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            **settings.kafka_client_options,
        )
        await consumer.start()
        try:
            ends = await consumer.end_offsets(partitions)
            starts = await consumer.beginning_offsets(partitions)
            committed = await admin.list_consumer_group_offsets(group_id, partitions=partitions)
            skipped: int = sum(
                end - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else starts[tp])
                for tp, end in ends.items()
            )
            consumer.assign(partitions)
            await consumer.commit(dict(ends))
            return skipped
        finally:
            await consumer.stop()


def _out_of_worker(summary: dict[str, Any], baseline: dict[str, Any]) -> int:
    """Replayed records that are out: dead-lettered, or delivered with all their events acknowledged."""

    def since_start(key: str) -> float:
        return float(summary[key]) - float(baseline.get(key, 0.0))

    return int(since_start("dlq_records_total") + since_start("posts_delivered_total"))


def _start_replay(posts_file: Path, settings: Settings, rate: float, progress: dict[str, int]) -> Any:
    """Replay in a thread with its own event loop, so the summary keeps refreshing in this one."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(
        lambda: asyncio.run(
            replay(
                posts_file,
                settings.input_topic,
                settings.kafka_bootstrap,
                rate,
                show_progress=False,
                client_options=settings.kafka_client_options,
                on_sent=lambda count: progress.__setitem__("sent", count),
                hold=None if rate <= 0 else lambda sent: sent - progress["out"] > max(1.0, rate * DEMO_MAX_AHEAD_S),
            )
        )
    )
    pool.shutdown(wait=False)
    return future
