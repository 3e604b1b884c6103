"""A running worker's /metrics, as `curl 127.0.0.1:<port>/metrics` shows it: every metric in
stream/metrics.py with a value the processed stream implies, the same on Faust's web server and the
standalone exporter, and every metric name the dashboard and the alert rules use."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from stream.metrics import Metrics
from stream.tools.promql import dashboard_expressions, exported_series, rule_expressions, unknown_names
from tests.integration.worker_fixtures import RunningWorker, scrape

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy/grafana/dashboards/socialpulse.json"
RULES = sorted((REPO / "deploy/prometheus/rules").glob("*.yml"))

# Gauges an idle worker rightly reports at zero: the stream is done, nothing is queued and the
# backend has been idle for longer than its busy window; lag is zero once the last offsets are committed.
# The test stream hints at four brands, far below the limit past which hints are dropped.
IDLE_ZERO = {
    "socialpulse_inflight_tokens",
    "socialpulse_dead_letters_inflight",
    "socialpulse_backend_busy_ratio",
    "socialpulse_consumer_lag_records",
    "socialpulse_brand_hints_dropped_total",
}
SAMPLE_SUFFIX = {"counter": "_total", "histogram": "_count", "gauge": "", "info": "_info"}


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def expressions(source: str) -> list[str]:
    if source == "dashboard":
        return dashboard_expressions(json.loads(DASHBOARD.read_text()))
    return [e for path in RULES for e in rule_expressions(yaml.safe_load(path.read_text()))]


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_promql_name_is_exported_by_the_worker(running_worker: RunningWorker, source: str) -> None:
    exprs = expressions(source)
    assert exprs, f"no PromQL in the {source}"
    exported = exported_series(fetch(running_worker.web_url("/metrics")))
    assert unknown_names(exprs, exported) == {}


def test_every_metric_has_a_value(running_worker: RunningWorker) -> None:
    snap = scrape(running_worker.web_url("/metrics"))
    families = {family.name: family.type for family in Metrics().registry.collect()}
    assert families, "stream/metrics.py registers nothing"
    missing, zero = [], []
    for family, kind in sorted(families.items()):
        sample = family + SAMPLE_SUFFIX[kind]
        values = [value for _, value in snap.samples.get(sample, [])]
        if not values:
            missing.append(sample)
        elif sample not in IDLE_ZERO and not sum(values):
            zero.append(sample)
    assert missing == [] and zero == [], f"not exported: {missing}; zero: {zero}"
    lag = running_worker.input_lag(snap)
    assert sorted(lag) == [str(p) for p in range(running_worker.partitions)], lag


def test_web_and_exporter_serve_the_same_samples(running_worker: RunningWorker) -> None:
    # The worker is idle, so two reads a moment apart must agree sample for sample.
    web = scrape(running_worker.web_url("/metrics")).samples
    exporter = running_worker.scrape().samples
    assert web.keys() == exporter.keys()
    for name, samples in web.items():
        assert sorted(samples, key=repr) == sorted(exporter[name], key=repr), name


@pytest.mark.parametrize("path", ["/table/", "/router/", "/graph/"])
def test_faust_routes_that_expose_state_are_off(running_worker: RunningWorker, path: str) -> None:
    # /table/<name>/ served every brand state (post texts, author ids) to anyone who reached the port.
    with pytest.raises(urllib.error.HTTPError) as missing:
        fetch(running_worker.web_url(path))
    assert missing.value.code == 404
