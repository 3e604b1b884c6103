"""Check PromQL in the shipped dashboard and alert rules against the series a worker exports.

Used by the tests, against a fresh `Metrics` registry or a running worker's /metrics text. Parsing needs
promql-parser from the dev extra, imported on first use so the worker never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# Series Prometheus itself writes for every target and for alerting; no worker exports them.
PROMETHEUS_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)

_GRAFANA_VAR = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_GRAFANA_DURATIONS = {"__rate_interval", "__interval", "__range"}
_GRAFANA_SECONDS = {"__range_s", "__interval_ms", "__range_ms"}
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*\w+\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((.*)\)\s*$", re.S)


def substitute_grafana_variables(expr: str) -> str:
    """Replace Grafana's $variables with values PromQL accepts, so the expression can be parsed.

    Built-in intervals become durations; dashboard variables only appear inside label matcher strings.
    """

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in _GRAFANA_DURATIONS:
            return "5m"
        if name in _GRAFANA_SECONDS:
            return "300"
        return "x"

    return _GRAFANA_VAR.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names selected anywhere in a PromQL expression (raises ValueError if it does not parse)."""
    import promql_parser

    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
                    names.add(matcher.value)
        return True

    promql_parser.walk(promql_parser.parse(substitute_grafana_variables(expr)), visit)
    return names


def _panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        # Collapsed rows keep their panels nested.
        yield from _panels(panel.get("panels", []))


def dashboard_expressions(dashboard: Mapping[str, Any]) -> list[str]:
    """Every PromQL expression in a Grafana dashboard: panel targets and query variables."""
    exprs = [
        target["expr"]
        for panel in _panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, Mapping) else str(query or "")
        # label_values(selector, label) and query_result(expr) wrap PromQL in Grafana's own syntax.
        for pattern in (_LABEL_VALUES, _QUERY_RESULT):
            if m := pattern.match(text):
                text = m.group(1)
                break
        if text.strip():
            exprs.append(text)
    return exprs


def rule_expressions(rules: Mapping[str, Any]) -> list[str]:
    """Every `expr` of a Prometheus rule file (alerting and recording rules)."""
    return [rule["expr"] for group in rules.get("groups", []) for rule in group.get("rules", [])]


def exported_series(exposition: str) -> set[str]:
    """Sample names in Prometheus text exposition, e.g. `x_bucket`, `x_count`, `y_total`, `z_info`."""
    from prometheus_client.parser import text_string_to_metric_families

    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def unknown_names(expressions: Iterable[str], exported: set[str]) -> dict[str, set[str]]:
    """Expression -> names it selects that are neither exported nor written by Prometheus itself."""
    missing: dict[str, set[str]] = {}
    for expr in expressions:
        unknown = metric_names(expr) - exported - PROMETHEUS_SERIES
        if unknown:
            missing[expr] = unknown
    return missing
