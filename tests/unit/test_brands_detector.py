"""Alert detection on synthetic streams of real rated tweets, through the backtest (matching, windows, alerts).

The texts and sentiment labels are the human-rated ICWSM-2014 tweets (the committed sample when the corpus
is not downloaded); brands, authors and arrival times are drawn per seed.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from stream.brands.backtest import BacktestResult, run_backtest
from stream.brands.query import BrandCatalog
from stream.brands.synthetic import Burst, RatedTweet, StreamSpec, demo_brands_yaml, load_rated_tweets, synthetic_posts
from stream.settings import Settings
from stream.worker import build_validator

MINUTE = 60_000


@cache
def tweets() -> list[RatedTweet]:
    return load_rated_tweets()


def backtest(spec: StreamSpec) -> BacktestResult:
    records = [msgspec.json.encode(post) for post in synthetic_posts(spec, tweets())]
    return run_backtest(records, BrandCatalog.from_yaml_text(demo_brands_yaml()), build_validator(Settings()))


@pytest.mark.parametrize("seed", range(5))
def test_an_hour_of_steady_traffic_raises_no_alert(seed: int) -> None:
    result = backtest(StreamSpec(minutes=60, seed=seed))
    assert result.windows == 4 * 60
    assert result.alerts == []


@pytest.mark.parametrize(("seed", "start_minute"), [(0, 40.0), (1, 40.0), (2, 40.5), (3, 41.25)])
def test_a_negative_burst_raises_one_crisis_and_one_resolution(seed: int, start_minute: float) -> None:
    spec = StreamSpec(minutes=70, seed=seed, bursts=[Burst("Acme", start_minute, minutes=3, per_minute=60)])
    result = backtest(spec)
    assert {a.brand for a in result.alerts} == {"Acme"}
    crisis = [a for a in result.alerts if a.kind == "crisis" and a.status != "resolved"]
    resolved = [a for a in result.alerts if a.status == "resolved"]
    assert len(crisis) == 1, result.alerts
    assert len(resolved) == 1
    assert [a.status for a in result.alerts] == ["firing", "resolved"]
    alert, end = crisis[0], resolved[0]
    burst_start = spec.start_ms + int(start_minute * MINUTE)
    # Within two windows of the burst: the window it fires for starts before burst start + 2 minutes.
    assert burst_start - MINUTE < alert.window.start < burst_start + 2 * MINUTE
    assert alert.severity == "critical"
    assert {s.metric for s in alert.signals} == {"volume", "negativity"}
    assert all(s.z >= 3 for s in alert.signals)
    assert alert.observed > alert.baseline_mean
    assert alert.examples and alert.examples[0].sentiment == "negative"
    assert alert.top_terms and all(t.lift > 1 for t in alert.top_terms)
    assert end.alert_id == alert.alert_id
    assert alert.window.end <= end.window.start < burst_start + 8 * MINUTE


def test_an_escalation_names_the_kind_it_replaces() -> None:
    # A mild negative burst opens a negativity spike; a strong one makes it a crisis. Alertmanager knows the
    # two kinds as two alerts, so the webhook must learn which one the escalation ends.
    mild, strong = Burst("Acme", 17.0, minutes=3, per_minute=8), Burst("Acme", 20.0, minutes=2, per_minute=60)
    result = backtest(StreamSpec(minutes=26, seed=0, per_minute=15, bursts=[mild, strong]))
    assert [(a.status, a.kind, a.severity, a.escalated_from) for a in result.alerts] == [
        ("firing", "negativity_spike", "warning", None),
        ("escalated", "crisis", "critical", "negativity_spike"),
        ("resolved", "crisis", "critical", None),
    ]
    assert len({a.alert_id for a in result.alerts}) == 1


def test_the_backtest_command_reports_json(tmp_path: Path) -> None:
    import typer

    from stream.brands.cli import backtest_command

    spec = StreamSpec(minutes=45, seed=7, bursts=[Burst("Globex", 30.0)])
    posts = tmp_path / "posts.jsonl"
    posts.write_bytes(b"\n".join(msgspec.json.encode(p) for p in synthetic_posts(spec, tweets())) + b"\n")
    brands = tmp_path / "brands.yaml"
    brands.write_text(demo_brands_yaml(), encoding="utf-8")
    app = typer.Typer()
    app.command()(backtest_command)
    result = CliRunner().invoke(app, ["--brands", str(brands), "--posts", str(posts), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["windows"] == 4 * 45
    assert report["posts"] == len(posts.read_bytes().splitlines())
    assert [(a["brand"], a["kind"], a["status"]) for a in report["alerts"]] == [
        ("Globex", "crisis", "firing"),
        ("Globex", "crisis", "resolved"),
    ]


def test_the_backtest_command_shows_query_errors(tmp_path: Path) -> None:
    import typer

    from stream.brands.cli import backtest_command

    brands = tmp_path / "brands.yaml"
    brands.write_text("brands:\n  Acme: 'acme AND (rocket'\n", encoding="utf-8")
    posts = tmp_path / "posts.jsonl"
    posts.write_text("", encoding="utf-8")
    app = typer.Typer()
    app.command()(backtest_command)
    result = CliRunner().invoke(app, ["--brands", str(brands), "--posts", str(posts)])
    assert result.exit_code == 2
    assert f"{brands}:2:19: brand 'Acme': unclosed '('" in result.output
