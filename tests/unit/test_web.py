"""LiveStats ring arithmetic, PromQL-style quantiles, and the summary's windowed percentiles."""

from __future__ import annotations

import math

import pytest

from stream.metrics import Metrics
from stream.web import LiveStats, Summary, histogram_quantile

INF = math.inf


def test_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1 * 10 / 10)
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.1 * 4 / 10)  # first bucket starts at 0


def test_quantile_edge_cases_follow_promql() -> None:
    assert histogram_quantile(0.99, [(1.0, 90.0), (2.0, 95.0), (INF, 100.0)]) == 2.0  # +Inf bucket
    assert histogram_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None  # no observations: NaN
    assert histogram_quantile(0.5, [(1.0, 3.0), (2.0, 5.0)]) is None  # no +Inf bucket: NaN
    assert histogram_quantile(1.5, [(1.0, 3.0), (INF, 3.0)]) == INF
    assert histogram_quantile(-1, [(1.0, 3.0), (INF, 3.0)]) == -INF
    # Non-monotonic counts (scraped mid-update) are raised to the running maximum.
    assert histogram_quantile(0.75, [(1.0, 2.0), (2.0, 5.0), (3.0, 4.0), (4.0, 8.0), (INF, 8.0)]) == pytest.approx(
        3 + 1 / 3
    )


def test_live_stats_rate_series_and_mix() -> None:
    live = LiveStats(window_s=60)
    now = 1_000_000.0
    for k in range(1, 21):
        live.record_batch(now - k + 0.3, posts=5, brands_sentiments=[("acme", "positive")])
    live.record_batch(now + 0.1, posts=100, brands_sentiments=[("acme", "negative"), ("globex", "neutral")])
    assert live.throughput(now + 0.5, over_s=10) == 5.0  # the current, partial second is left out
    assert live.series(now + 0.5, over_s=3) == [5, 5, 5]
    assert live.sentiment_mix(now + 0.5) == {"acme": {"positive": 20, "negative": 1}, "globex": {"neutral": 1}}
    assert live.sentiment_mix(now + 0.5, over_s=5) == {"acme": {"positive": 4, "negative": 1}, "globex": {"neutral": 1}}


def test_live_stats_young_worker_and_ring_reuse() -> None:
    live = LiveStats(window_s=10)
    live.record_batch(100.2, posts=8)
    live.record_batch(101.7, posts=8)
    assert live.throughput(102.0, over_s=10) == 8.0  # two seconds of history, not ten
    live.record_batch(112.5, posts=3)  # same slot as second 102 would be; stale slots are reset
    assert live.series(113.0, over_s=10) == [0] * 9 + [3]
    assert LiveStats().throughput(5.0) == 0.0


def test_summary_window_diffs_against_an_earlier_request() -> None:
    clock = iter([100.0, 101.5, 200.0])
    metrics, live = Metrics(), LiveStats()
    summary = Summary(metrics, live, latency_window_s=60, clock=lambda: next(clock))
    metrics.e2e_created.observe(30.0)
    first = summary.build()
    assert first["latency_seconds"]["created"]["window"]["count"] == 0.0
    metrics.e2e_created.observe(0.002)
    second = summary.build()
    assert second["latency_seconds"]["created"]["window"]["count"] == 1.0
    assert second["latency_seconds"]["created"]["window"]["p99"] == pytest.approx(0.001 + 0.0015 * 0.99)
    assert second["latency_seconds"]["created"]["since_start"]["count"] == 2.0
    assert second["latency_window_s"] == 1.5
    # 100 s later the first snapshot is out of the window; the baseline moves to the second one.
    third = summary.build()
    assert third["latency_window_s"] == 98.5
    assert third["latency_seconds"]["created"]["window"]["count"] == 0.0
