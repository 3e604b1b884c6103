"""`socialpulse backtest`: the brand monitor over a JSONL file of posts, in event time (mounted by stream/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stream.settings import Settings


def backtest_command(
    brands: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Brands file (YAML).")],
    posts: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Posts, one JSON object a line.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print {alerts, windows, posts, ...} as JSON.")] = False,
    model_dir: Annotated[
        Path | None, typer.Option(help="Model for posts without labels (default: SOCIALPULSE_MODEL_DIR).")
    ] = None,
) -> None:
    """Replay posts through brand matching, windows and alert detection; report the alerts that would fire."""
    from stream.brands.backtest import Classifier, onnx_classifier, read_records, run_backtest
    from stream.brands.monitor import MonitorConfig
    from stream.brands.query import BrandCatalog, QuerySyntaxError
    from stream.worker import build_validator

    settings = Settings()
    try:
        catalog = BrandCatalog.from_yaml(brands)
    except QuerySyntaxError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    directory = model_dir or settings.model_dir
    classify: Classifier | None = onnx_classifier(directory) if (directory / "manifest.json").is_file() else None
    try:
        result = run_backtest(read_records(posts), catalog, build_validator(settings), classify, MonitorConfig())
    except ValueError as error:
        typer.echo(f"backtest: {error} (no model at {directory})", err=True)
        raise typer.Exit(2) from None
    if json_output:
        typer.echo(json.dumps(result.summary(), ensure_ascii=False))
        return
    typer.echo(
        f"{result.posts} posts ({result.rejected} rejected), {result.mentions} brand mentions, "
        f"{result.windows} brand windows, {len(result.flagged)} flagged, {len(result.escalations)} author escalations"
    )
    for alert in result.alerts:
        typer.echo(
            f"{alert.window.start} {alert.brand:<16} {alert.status:<9} {alert.kind:<16} {alert.metric} "
            f"{alert.observed:g} vs {alert.baseline_mean:g}+-{alert.baseline_std:g} (z {alert.z:g})"
            + (f"  terms: {', '.join(t.term for t in alert.top_terms[:5])}" if alert.top_terms else "")
        )
    if not result.alerts:
        typer.echo("no alerts")


def aspects_eval_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print the reports as one JSON object.")] = False,
    model_dir: Annotated[Path | None, typer.Option(help="Model (default: SOCIALPULSE_MODEL_DIR).")] = None,
) -> None:
    """Per-brand sentiment on the hand-written multi-brand set: the post label for every brand vs its own span."""
    from stream.brands.aspects_eval import SPLITS, evaluate, onnx_classify

    results = evaluate(onnx_classify(model_dir or Settings().model_dir))
    if json_output:
        typer.echo(json.dumps(results))
        return
    typer.echo(f"{'split':<6} {'posts':>5} {'brands':>6}  {'method':<10} {'accuracy':>8} {'macro-F1':>8}")
    for split in SPLITS:
        result = results[split]
        for method in ("post_level", "per_brand"):
            report = result[method]
            typer.echo(
                f"{split:<6} {result['posts']:>5} {report['test_size']:>6}  {method:<10} "
                f"{report['accuracy']:>8.3f} {report['macro_f1']:>8.3f}"
            )
        typer.echo(f"{'':<21}{'gain':<10} {result['accuracy_gain']:>+8.3f} {result['macro_f1_gain']:>+8.3f}")
