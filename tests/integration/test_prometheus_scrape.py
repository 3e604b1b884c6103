"""A real Prometheus (Debian's `prometheus` binary) scrapes the socialpulse exporter and evaluates the
shipped alert rules; its HTTP API must return the series, and histogram_quantile must agree with the
live page's interpolation of the same buckets.

The exporter is a real `Metrics` registry served by `start_metrics_server` with known observations;
`exporter` is the one fixture to swap for a running worker."""

from __future__ import annotations

import json
import shutil
import socket
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

from stream.metrics import Metrics
from stream.promql import dashboard_expressions, rule_expressions, unknown_names
from stream.settings import Settings
from stream.web import E2E_HISTOGRAMS, MetricsServer, histogram_quantile, start_metrics_server

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "deploy/prometheus/rules"
DASHBOARD = REPO / "deploy/grafana/dashboards/socialpulse.json"

# Latencies chosen to land in several buckets; ingest has 5% above the top finite bucket (60 s), so its
# p99 exercises histogram_quantile's +Inf rule.
CREATED_LATENCIES = [0.0007 * (i + 1) for i in range(60)] + [0.3 + 0.05 * i for i in range(35)] + [7.0] * 5
INGEST_LATENCIES = [0.002] * 80 + [0.4] * 15 + [120.0] * 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def populate(metrics: Metrics) -> None:
    """One deterministic workload touching every metric."""
    for v in CREATED_LATENCIES:
        metrics.e2e_created.observe(v)
    for v in INGEST_LATENCIES:
        metrics.e2e_ingest.observe(v)
    for stage, seconds in (("queue", 0.004), ("tokenize", 0.0008), ("inference", 0.03), ("produce", 0.006)):
        metrics.stage.labels(stage).observe(seconds)
    metrics.batch_size.observe(32)
    metrics.batch_tokens.observe(32 * 48)
    metrics.padding_ratio.set(0.125)
    metrics.inflight_tokens.set(1536)
    metrics.backend_busy.set(0.4)
    metrics.posts_consumed.inc(250)
    metrics.events_produced.labels("social.sentiment", "positive").inc(120)
    metrics.events_produced.labels("social.sentiment", "negative").inc(90)
    metrics.dlq_records.labels("invalid_json").inc(3)
    metrics.dlq_records.labels("duplicate_id").inc(2)
    metrics.brand_posts.labels("acme").inc(40)
    metrics.brand_sentiment.labels("acme", "positive").inc(25)
    metrics.brand_sentiment.labels("acme", "negative").inc(15)
    metrics.consumer_lag.labels("social.posts", "0").set(17)
    metrics.consumer_lag.labels("social.posts", "1").set(4)
    metrics.rebalances.inc()
    metrics.worker_up.set(1)
    metrics.model_info.info({"name": "minilm-multitask", "version": "test", "variant": "int8", "provider": "cpu"})


@pytest.fixture(scope="module")
def exporter() -> Iterator[MetricsServer]:
    metrics = Metrics()
    populate(metrics)
    server = start_metrics_server(Settings(metrics_host="127.0.0.1", metrics_port=free_port()), metrics)
    assert server is not None
    yield server
    server.close()


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
def prometheus(exporter: MetricsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run scripts/system-deps.sh (Debian package prometheus)")
    tmp_path = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_DIR / "*.yml")],
        "scrape_configs": [
            {"job_name": "socialpulse", "static_configs": [{"targets": [f"{exporter.host}:{exporter.port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"prometheus did not become ready:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def exporter_buckets(exporter: MetricsServer, histogram: str) -> list[tuple[float, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(exporter.url, timeout=5) as r:
        text = r.read().decode()
    return sorted(
        (float(s.labels["le"]), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == f"{histogram}_bucket"
    )


def test_prometheus_scrapes_the_exporter(prometheus: Prometheus, exporter: MetricsServer) -> None:
    prometheus.wait_for('socialpulse_posts_consumed_total{job="socialpulse"}')
    assert prometheus.scalar('up{job="socialpulse"}') == 1
    assert prometheus.scalar("socialpulse_posts_consumed_total") == 250
    assert prometheus.scalar("socialpulse_worker_up") == 1
    assert prometheus.scalar('sum(socialpulse_events_produced_total{topic="social.sentiment"})') == 210
    dlq = {r["metric"]["reason"]: float(r["value"][1]) for r in prometheus.query("socialpulse_dlq_records_total")}
    assert dlq == {"invalid_json": 3, "duplicate_id": 2}
    lag = {r["metric"]["partition"]: float(r["value"][1]) for r in prometheus.query("socialpulse_consumer_lag_records")}
    assert lag == {"0": 17, "1": 4}
    (info,) = prometheus.query("socialpulse_model_info")
    assert info["metric"]["name"] == "minilm-multitask" and info["metric"]["variant"] == "int8"
    assert prometheus.scalar("socialpulse_e2e_created_latency_seconds_count") == len(CREATED_LATENCIES)
    assert prometheus.scalar('socialpulse_stage_latency_seconds_count{stage="inference"}') == 1


@pytest.mark.parametrize("histogram", sorted(E2E_HISTOGRAMS.values()))
def test_page_quantiles_match_promql(prometheus: Prometheus, exporter: MetricsServer, histogram: str) -> None:
    prometheus.wait_for(f"{histogram}_count")
    buckets = exporter_buckets(exporter, histogram)
    for q in (0.5, 0.95, 0.99):
        ours = histogram_quantile(q, buckets)
        theirs = prometheus.scalar(f"histogram_quantile({q}, {histogram}_bucket)")
        assert ours == pytest.approx(theirs, rel=1e-9), (histogram, q)
    if histogram.endswith("ingest_latency_seconds"):
        # 5% of observations are above the top finite bucket: PromQL answers with that bound.
        assert histogram_quantile(0.99, buckets) == 60.0


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
    # The healthy exporter must not trip the worker-down alert.
    firing = {r["name"] for r in rules if r["state"] != "inactive"}
    assert "SocialpulseWorkerDown" not in firing
