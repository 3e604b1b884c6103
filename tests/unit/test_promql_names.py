"""Every metric name used by the Grafana dashboard and the alert rules is exported by the worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from stream.metrics import Metrics
from stream.tools.promql import dashboard_expressions, exported_series, metric_names, rule_expressions, unknown_names

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy/grafana/dashboards/socialpulse.json"
RULES = sorted((REPO / "deploy/prometheus/rules").glob("*.yml"))


def exercised_exposition() -> str:
    """/metrics text of a fresh registry after one observation per metric, so labelled series exist."""
    metrics = Metrics()
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labelnames = metric._labelnames  # no public accessor in prometheus_client
        child = metric.labels(*(f"{name}-value" for name in labelnames)) if labelnames else metric
        if isinstance(child, Histogram):
            child.observe(0.01)
        elif isinstance(child, Counter):
            child.inc()
        elif isinstance(child, Gauge):
            child.set(1)
        elif isinstance(child, Info):
            child.info({"version": "1"})
        else:
            raise TypeError(f"no exercise for {type(child).__name__}; extend this helper")
    return generate_latest(metrics.registry).decode()


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_series(exercised_exposition())


def dashboard_exprs() -> list[str]:
    return dashboard_expressions(json.loads(DASHBOARD.read_text()))


def rules_exprs() -> list[str]:
    return [e for path in RULES for e in rule_expressions(yaml.safe_load(path.read_text()))]


def test_sources_have_expressions() -> None:
    assert RULES, "no rule files under deploy/prometheus/rules"
    assert len(dashboard_exprs()) >= 20
    assert len(rules_exprs()) >= 4


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_name_is_exported(source: str, exported: set[str]) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else rules_exprs()
    assert unknown_names(exprs, exported) == {}


def test_dashboard_shows_every_metric(exported: set[str]) -> None:
    """A metric added to stream/metrics.py without a panel fails here."""
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    families = {_family(name) for name in exported if not name.endswith("_created")}
    assert families - {_family(name) for name in used} == set()


def _family(sample: str) -> str:
    """Histogram samples share one family; counters keep _total, gauges and info series are as named."""
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


def test_check_catches_a_wrong_name(exported: set[str]) -> None:
    exprs = [
        "sum(rate(socialpulse_posts_consumed_totl[5m]))",
        "histogram_quantile(0.99, sum by (le) (rate(socialpulse_e2e_latency_seconds_bucket[$__rate_interval])))",
        '{__name__="socialpulse_nope", brand=~"$brand"}',
        "up == 0",
    ]
    assert unknown_names(exprs, exported) == {
        exprs[0]: {"socialpulse_posts_consumed_totl"},
        exprs[1]: {"socialpulse_e2e_latency_seconds_bucket"},
        exprs[2]: {"socialpulse_nope"},
    }


def test_unparsable_expression_is_an_error() -> None:
    with pytest.raises(ValueError):
        metric_names("sum(rate(socialpulse_posts_consumed_total[5m])")
