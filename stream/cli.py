"""`socialpulse`: the worker, replay, demo, benchmark, and the model tools."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from models.cli import app as models_app
from models.cli import classify
from stream.brands.cli import aspects_eval_command, backtest_command
from stream.kafka_auth import KafkaAuthenticationError
from stream.settings import Settings


class Role(enum.StrEnum):
    all = "all"
    pipeline = "pipeline"
    brands = "brands"


app = typer.Typer(help="socialpulse: real-time social media stream processor.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.command("classify")(classify)
app.command("backtest")(backtest_command)
app.command("aspects-eval")(aspects_eval_command)


@contextmanager
def _refused_login_exits() -> Iterator[None]:
    """Wrong credentials end the command with the broker's refusal in one line: a traceback would only
    bury it, and retrying cannot help."""
    try:
        yield
    except KafkaAuthenticationError as error:
        typer.echo(f"socialpulse: {error}", err=True)
        raise typer.Exit(1) from None


@app.command()
def run(
    loglevel: Annotated[str, typer.Option(help="Faust log level.")] = "info",
    role: Annotated[
        Role | None,
        typer.Option(help="all (default, SOCIALPULSE_ROLE), pipeline (ingest + model) or brands (brand monitor)."),
    ] = None,
) -> None:
    """Run the stream worker (settings from SOCIALPULSE_* env vars)."""
    import faust
    import mode.loop

    from models.manifest import ManifestError
    from stream.brands.query import QuerySyntaxError
    from stream.metrics import Metrics
    from stream.serving import ServingError
    from stream.worker import build_worker_app, changelog_topics, ensure_topics

    settings = Settings() if role is None else Settings(role=role.value)
    # Before anything makes a loop: Faust's worker takes it from the policy.
    mode.loop.use({"uvloop": "uvloop", "asyncio": "aio"}[settings.event_loop])
    try:
        worker_app, _ = build_worker_app(settings, Metrics())
    # A broken brands file (its place), a missing model or languages no model serves: the fix, not a traceback.
    except (QuerySyntaxError, ManifestError, ServingError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    # Every client of the worker logs in as the admin does, so this is where wrong credentials stop it.
    with _refused_login_exits():
        asyncio.run(ensure_topics(settings, changelog_topics(worker_app)))
    faust.Worker(worker_app, loglevel=loglevel).execute_from_commandline()


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON-lines posts.")],
    rate: Annotated[float, typer.Option(help="Posts per second; 0 sends as fast as the broker takes them.")] = 100.0,
    topic: Annotated[str | None, typer.Option(help="Target topic (default: the input topic).")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many posts.")] = None,
    retime: Annotated[bool, typer.Option(help="Set created_at to the send time.")] = True,
) -> None:
    """Produce posts from a JSON-lines file at a steady rate, with progress."""
    from stream.tools.replay import replay as replay_posts

    settings = Settings()
    with _refused_login_exits():
        sent = asyncio.run(
            replay_posts(
                file,
                topic or settings.input_topic,
                settings.kafka_bootstrap,
                rate,
                retime=retime,
                limit=limit,
                client_options=settings.kafka_client_options,
            )
        )
    typer.echo(f"replayed {sent} posts to {topic or settings.input_topic}")


@app.command()
def demo(
    # On 2 cores shared with the broker and the replay, the worker with brand monitoring held posts 0.8-1.5 s
    # at p50 at 100 posts/s, 0.33-0.6 s at 60; a demo should show live latency, not a backlog.
    rate: Annotated[float, typer.Option(help="Replay rate, posts per second.")] = 60.0,
    malformed: Annotated[float, typer.Option(help="Share of deliberately malformed records.")] = 0.03,
    keep_kafka: Annotated[bool, typer.Option(help="Leave the local broker running afterwards.")] = False,
) -> None:
    """Start local Kafka, replay the 4,200 rated tweets, run the worker, show live results and latency."""
    from stream.tools.demo import run_demo

    summary = run_demo(rate, malformed, keep_kafka)
    created = summary.get("latency_seconds", {}).get("created", {}).get("since_start", {})
    alerts = summary.get("alerts", [])
    incidents = ", ".join(f"{a['kind']} {a['brand']} {a['status']}" for a in alerts) or "none"
    typer.echo(
        f"demo done: {summary.get('posts_consumed_total', 0):,.0f} posts consumed, "
        f"{summary.get('events_produced_total', 0):,.0f} events, "
        f"{summary.get('dlq_records_total', 0):,.0f} dead letters, "
        f"e2e p50 {1000 * (created.get('p50') or 0):,.1f} ms, p99 {1000 * (created.get('p99') or 0):,.1f} ms; "
        f"brand alerts: {incidents}"
    )


@app.command()
def bench(
    posts: Annotated[int, typer.Option(help="Backlog of real tweets for bare ORT and the pipeline drain.")] = 4_200,
    latency_posts: Annotated[int, typer.Option(help="Posts replayed live for end-to-end latency.")] = 1_500,
    latency_load: Annotated[float, typer.Option(help="Latency replay rate, as a share of the drain rate.")] = 0.5,
    naive_posts: Annotated[int, typer.Option(help="Posts through the naive per-message baseline.")] = 300,
    variant: Annotated[str, typer.Option(help="Model variant (falls back to fp32 if the manifest lacks it).")] = "int8",
    ceiling_posts: Annotated[
        int, typer.Option(help="Backlog drained with the null backend (the pipeline's own ceiling); 0 skips it.")
    ] = 20_000,
    profile: Annotated[
        bool, typer.Option("--profile", help="Record the ceiling worker with py-spy; summary in the output.")
    ] = False,
    processes: Annotated[
        int, typer.Option(help="Also drain with this many worker processes in one group (ceiling and model); 1 skips.")
    ] = 2,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Pipeline vs bare ONNX Runtime vs a naive transformers-per-message Faust agent, in one run."""
    from stream.tools.bench import main as run_bench

    run_bench(posts, latency_posts, latency_load, naive_posts, variant, ceiling_posts, profile, processes, as_json=json)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app()
