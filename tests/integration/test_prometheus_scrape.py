"""A real Prometheus (Debian's `prometheus` binary) scrapes a running worker's standalone exporter and
evaluates the shipped alert rules; its HTTP API must return the series the processed stream implies, and
histogram_quantile must agree with the live page's interpolation of the worker's own buckets."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.manifest import load_manifest
from stream.metrics import STAGES
from stream.settings import Settings
from stream.tools.promql import dashboard_expressions, rule_expressions, unknown_names
from stream.web import E2E_HISTOGRAMS, histogram_quantile
from tests.integration.harness import free_port, served
from tests.integration.worker_fixtures import RunningWorker

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "deploy/prometheus/rules"
DASHBOARD = REPO / "deploy/grafana/dashboards/socialpulse.json"


@pytest.fixture(scope="module")
def exporter(running_worker: RunningWorker) -> RunningWorker:
    """The worker whose exporter Prometheus scrapes: idle, with every record it was sent accounted for."""
    return running_worker


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            if result := self.query(expr):
                return result
            time.sleep(0.25)
        pytest.fail(f"no result for {expr!r} within {timeout_s}s:\n{self.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def prometheus(exporter: RunningWorker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp_path = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_DIR / "*.yml")],
        "scrape_configs": [{"job_name": "socialpulse", "static_configs": [{"targets": [exporter.metrics_target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    args = [
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address={url.removeprefix('http://')}",
    ]
    with served("prometheus", "prometheus", args, f"{url}/-/ready", log) as process:
        yield Prometheus(url, process, log)


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {r["metric"][label]: float(r["value"][1]) for r in result}


def test_prometheus_scrapes_the_worker(prometheus: Prometheus, exporter: RunningWorker) -> None:
    prometheus.wait_for('socialpulse_posts_consumed_total{job="socialpulse"}')
    valid, topics = len(exporter.valid), exporter.topics
    assert prometheus.scalar('up{job="socialpulse"}') == 1
    assert prometheus.scalar("socialpulse_worker_up") == 1
    assert prometheus.scalar("socialpulse_posts_consumed_total") == len(exporter.records)

    sentiment = by_label(prometheus.query(f'socialpulse_events_produced_total{{topic="{topics.sentiment}"}}'), "label")
    assert sum(sentiment.values()) == valid and set(sentiment) <= {"negative", "neutral", "positive"}, sentiment
    # Behaviour is multi-label: every post counts once per label, or once as "none".
    behaviour = prometheus.scalar(f'sum(socialpulse_events_produced_total{{topic="{topics.behaviour}"}})')
    assert behaviour >= valid

    dlq = by_label(prometheus.query("socialpulse_dlq_records_total"), "reason")
    assert dlq == exporter.expected_dlq and len(dlq) >= 8, dlq

    for name in ("e2e_created", "e2e_ingest"):
        assert prometheus.scalar(f"socialpulse_{name}_latency_seconds_count") == valid, name
        assert prometheus.scalar(f"socialpulse_{name}_latency_seconds_sum") > 0, name
    batches = prometheus.scalar("socialpulse_batch_size_posts_count")
    assert batches > 0
    assert prometheus.scalar("socialpulse_batch_size_posts_sum") == valid
    assert prometheus.scalar("socialpulse_batch_tokens_count") == batches
    assert prometheus.scalar("socialpulse_batch_tokens_sum") >= valid
    stages = by_label(prometheus.query("socialpulse_stage_latency_seconds_count"), "stage")
    assert set(stages) == set(STAGES) and all(n >= batches for n in stages.values()), stages
    assert all(s > 0 for s in by_label(prometheus.query("socialpulse_stage_latency_seconds_sum"), "stage").values())

    brands = by_label(prometheus.query("socialpulse_brand_posts_total"), "brand")
    assert brands == exporter.expected_brand_posts
    mix = prometheus.query("socialpulse_brand_sentiment_total")
    assert sum(float(r["value"][1]) for r in mix) == sum(brands.values())

    assert prometheus.scalar("socialpulse_rebalances_total") >= 1

    # One series per served model; the default model serves English.
    manifest = load_manifest(Settings().model_dir)
    infos = {r["metric"]["name"]: r["metric"] for r in prometheus.query("socialpulse_model_info")}
    labels = infos[manifest.name]
    assert (labels["version"], labels["languages"]) == (manifest.version, "en"), labels
    assert labels["variant"] in {"fp32", "fp16", "int8"} and labels["provider"].endswith("ExecutionProvider"), labels

    lag = prometheus.query("socialpulse_consumer_lag_records")
    assert {r["metric"]["topic"] for r in lag} == {topics.posts}, lag
    assert by_label(lag, "partition") == {str(p): 0 for p in range(exporter.partitions)}, lag


@pytest.mark.parametrize("histogram", sorted(E2E_HISTOGRAMS.values()))
def test_page_quantiles_match_promql(prometheus: Prometheus, exporter: RunningWorker, histogram: str) -> None:
    prometheus.wait_for(f"{histogram}_count")
    buckets = exporter.scrape().buckets(histogram)
    assert buckets[-1][1] == len(exporter.valid)
    for q in (0.5, 0.95, 0.99):
        ours = histogram_quantile(q, buckets)
        theirs = prometheus.scalar(f"histogram_quantile({q}, {histogram}_bucket)")
        assert ours is not None and ours > 0, (histogram, q)
        assert ours == pytest.approx(theirs, rel=1e-9), (histogram, q)


def test_dashboard_and_rule_names_exist_in_prometheus(prometheus: Prometheus) -> None:
    prometheus.wait_for("socialpulse_worker_up")
    names = set(prometheus.api("/api/v1/label/__name__/values"))
    exprs = dashboard_expressions(json.loads(DASHBOARD.read_text()))
    for path in sorted(RULES_DIR.glob("*.yml")):
        exprs += rule_expressions(yaml.safe_load(path.read_text()))
    assert unknown_names(exprs, names) == {}


def test_alert_rules_load_and_evaluate(prometheus: Prometheus) -> None:
    prometheus.wait_for("socialpulse_worker_up")
    # Health is "unknown" until a rule's first evaluation, "err" if the query fails on real data.
    deadline = time.monotonic() + 20
    while True:
        rules = [r for g in prometheus.api("/api/v1/rules")["groups"] for r in g["rules"]]
        health = {r["name"]: (r["health"], r.get("lastError", "")) for r in rules}
        assert not [h for h in health.values() if h[0] == "err"], health
        if rules and all(h[0] == "ok" for h in health.values()):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"rules not evaluated: {health}")
        time.sleep(0.5)
    assert {r["name"] for r in rules} >= {"SocialpulseWorkerDown", "SocialpulseDLQRateHigh"}
    # The healthy worker must not trip the worker-down alert.
    firing = {r["name"] for r in rules if r["state"] != "inactive"}
    assert "SocialpulseWorkerDown" not in firing
