"""Live page, JSON summary and /metrics on Faust's web server; the standalone Prometheus exporter.

The summary's latency percentiles are read from the same Prometheus histograms that /metrics exports,
interpolated inside buckets the way PromQL's histogram_quantile does, so the page and Grafana agree.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import msgspec
import orjson
from faust import web
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from stream.brands.model import Alert, BrandStats
from stream.metrics import Metrics
from stream.settings import Settings

QUANTILES = (0.5, 0.95, 0.99)
# generate_latest writes the classic text format; newer clients label it version=1.0.0, which
# older Prometheus servers don't negotiate, so announce what prometheus_client's own exporter does.
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The live page: HTML, CSS and JS as files beside this module, read once when the routes are registered.
STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {"live.css": "text/css", "live.js": "text/javascript"}
E2E_HISTOGRAMS = {
    "created": "socialpulse_e2e_created_latency_seconds",
    "ingest": "socialpulse_e2e_ingest_latency_seconds",
}


@dataclass(slots=True)
class _Slot:
    second: int = -1
    posts: int = 0
    mix: dict[tuple[str, str], int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)


class LiveStats:
    """Per-second ring of posts and (brand, sentiment) counts for the live page.

    Fed once per batch by the pipeline; read by the web handlers, which may run on Faust's web thread,
    hence the lock. Slots are reused in place: a slot whose second is stale is reset on write.
    """

    def __init__(self, window_s: int = 300) -> None:
        if window_s < 2:
            raise ValueError("window_s must be at least 2 seconds")
        self.window_s = window_s
        self._slots = [_Slot() for _ in range(window_s)]
        self._first_second: int | None = None
        self._lock = threading.Lock()

    def record_batch(
        self,
        now_s: float,
        *,
        posts: int,
        brands_sentiments: Iterable[tuple[str, str]] = (),
        languages: Iterable[str] = (),
    ) -> None:
        second = int(now_s)
        with self._lock:
            slot = self._slots[second % self.window_s]
            if slot.second != second:
                slot.second, slot.posts = second, 0
                slot.mix.clear()
                slot.languages.clear()
            slot.posts += posts
            for key in brands_sentiments:
                slot.mix[key] = slot.mix.get(key, 0) + 1
            for language in languages:
                slot.languages[language] = slot.languages.get(language, 0) + 1
            if self._first_second is None or second < self._first_second:
                self._first_second = second

    def _live(self, now_s: float, over_s: int, *, include_current: bool) -> list[_Slot]:
        """Slots inside the last `over_s` seconds; the current second is partial, so rates leave it out."""
        now = int(now_s)
        newest = now if include_current else now - 1
        oldest = newest - min(over_s, self.window_s) + 1
        return [s for s in self._slots if oldest <= s.second <= newest]

    def throughput(self, now_s: float, over_s: int = 10) -> float:
        """Posts per second over the last `over_s` complete seconds (or since the first batch, if later)."""
        with self._lock:
            if self._first_second is None:
                return 0.0
            span = min(over_s, self.window_s, int(now_s) - self._first_second)
            if span <= 0:
                return 0.0
            return sum(s.posts for s in self._live(now_s, span, include_current=False)) / span

    def series(self, now_s: float, over_s: int = 60) -> list[int]:
        """Posts per complete second, oldest first, zero-filled."""
        now = int(now_s)
        counts = dict.fromkeys(range(now - over_s, now), 0)
        with self._lock:
            for s in self._live(now_s, over_s, include_current=False):
                counts[s.second] = s.posts
        return list(counts.values())

    def sentiment_mix(self, now_s: float, over_s: int | None = None) -> dict[str, dict[str, int]]:
        """Brand -> sentiment -> posts over the last `over_s` seconds (default: the whole window)."""
        mix: dict[str, dict[str, int]] = {}
        with self._lock:
            for s in self._live(now_s, over_s or self.window_s, include_current=True):
                for (brand, label), n in s.mix.items():
                    per_brand = mix.setdefault(brand, {})
                    per_brand[label] = per_brand.get(label, 0) + n
        return mix

    def language_mix(self, now_s: float) -> dict[str, int]:
        """Language -> delivered posts over the whole window."""
        mix: dict[str, int] = {}
        with self._lock:
            for s in self._live(now_s, self.window_s, include_current=True):
                for language, n in s.languages.items():
                    mix[language] = mix.get(language, 0) + n
        return mix


class RecentAlerts:
    """The brand monitor's latest incidents for the live page: each alert id with its newest status (firing,
    escalated, resolved), newest first, at most `limit`. Fed by the brand agent as it sends alerts."""

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def record(self, alert: Alert) -> None:
        entry = msgspec.to_builtins(alert)
        with self._lock:
            self._latest.pop(alert.alert_id, None)
            self._latest[alert.alert_id] = entry
            while len(self._latest) > self.limit:
                del self._latest[next(iter(self._latest))]

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(reversed(self._latest.values()))


class BrandTimeline:
    """Each brand's last `windows` closed tumbling windows (posts, negativity, mean sentiment), oldest first,
    for the live page's sentiment-over-time chart. Fed by the brand agent as it sends window stats."""

    def __init__(self, windows: int = 30) -> None:
        self.windows = windows
        self._series: dict[str, deque[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def record(self, stats: BrandStats) -> None:
        if stats.window.kind != "tumbling":
            return
        point = {
            "start": stats.window.start,
            "end": stats.window.end,
            "posts": stats.posts,
            "negativity": stats.negativity,
            "mean_sentiment": stats.mean_sentiment,
        }
        with self._lock:
            self._series.setdefault(stats.brand, deque(maxlen=self.windows)).append(point)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {brand: list(points) for brand, points in sorted(self._series.items())}


# --- reading the registry -------------------------------------------------------------------------

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), sorted, ending with +Inf


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """PromQL's histogram_quantile on cumulative buckets; None where PromQL would return NaN."""
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    # Counts scraped mid-update can dip; PromQL forces them monotonic the same way.
    counts: list[float] = []
    for _, count in ordered:
        counts.append(max(count, counts[-1]) if counts else count)
    total = counts[-1]
    if total <= 0 or math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    rank = q * total
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(ordered) - 1:
        return ordered[-2][0]
    if b == 0 and ordered[0][0] <= 0:
        return ordered[0][0]
    start, end, count = 0.0, ordered[b][0], counts[b]
    if b > 0:
        start = ordered[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


@dataclass(slots=True)
class RegistrySnapshot:
    """One collect() of the registry, indexed by sample name."""

    samples: dict[str, list[tuple[dict[str, str], float]]]

    @classmethod
    def collect(cls, registry: CollectorRegistry) -> RegistrySnapshot:
        return cls.of(registry.collect())

    @classmethod
    def fetch(cls, url: str, timeout_s: float = 10.0) -> RegistrySnapshot:
        """A worker's /metrics read from outside (the tests, the soak bench), indexed the same way."""
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return cls.of(text_string_to_metric_families(response.read().decode()))

    @classmethod
    def of(cls, families: Iterable[Metric]) -> RegistrySnapshot:
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in families:
            for s in family.samples:
                samples.setdefault(s.name, []).append((dict(s.labels), s.value))
        return cls(samples)

    def total(self, name: str) -> float:
        return sum(v for _, v in self.samples.get(name, []))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, v in self.samples.get(name, []):
            key = labels.get(label, "")
            out[key] = out.get(key, 0.0) + v
        return out

    def buckets(self, histogram: str) -> Buckets:
        """Cumulative buckets of an unlabelled histogram (or summed over its labels)."""
        merged: dict[float, float] = {}
        for labels, v in self.samples.get(histogram + "_bucket", []):
            le = float(labels["le"])
            merged[le] = merged.get(le, 0.0) + v
        return sorted(merged.items())


def _quantiles(buckets: Buckets) -> dict[str, float | None]:
    return {f"p{round(q * 100)}": histogram_quantile(q, buckets) for q in QUANTILES}


def subtract_buckets(now: Buckets, then: Buckets) -> Buckets:
    """The observations between two snapshots of one histogram."""
    before = dict(then)
    return [(le, c - before.get(le, 0.0)) for le, c in now]


class Summary:
    """Builds /api/summary. Windowed percentiles diff the histogram against a snapshot taken on an
    earlier request (like rate() over a range), so only requests pay for this and nothing runs idle."""

    def __init__(
        self,
        metrics: Metrics,
        live: LiveStats,
        *,
        alerts: RecentAlerts | None = None,
        timeline: BrandTimeline | None = None,
        latency_window_s: float = 60.0,
        rate_window_s: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.live = live
        self.alerts = alerts or RecentAlerts()
        self.timeline = timeline or BrandTimeline()
        self.latency_window_s = latency_window_s
        self.rate_window_s = rate_window_s
        self.clock = clock
        self._history: deque[tuple[float, dict[str, Buckets]]] = deque()
        self._lock = threading.Lock()

    def _baseline(self, now: float, current: dict[str, Buckets]) -> tuple[float, dict[str, Buckets]] | None:
        """Oldest snapshot still inside the window; records the current one for later requests."""
        with self._lock:
            while len(self._history) > 1 and now - self._history[1][0] >= self.latency_window_s:
                self._history.popleft()
            baseline = self._history[0] if self._history else None
            if not self._history or now - self._history[-1][0] >= 1.0:
                self._history.append((now, current))
        return baseline

    def build(self) -> dict[str, Any]:
        now = self.clock()
        snap = RegistrySnapshot.collect(self.metrics.registry)
        current = {key: snap.buckets(name) for key, name in E2E_HISTOGRAMS.items()}
        baseline = self._baseline(now, current)
        latency: dict[str, Any] = {}
        for key, buckets in current.items():
            window = subtract_buckets(buckets, baseline[1][key]) if baseline else []
            latency[key] = {
                "since_start": {**_quantiles(buckets), "count": buckets[-1][1] if buckets else 0.0},
                "window": {**_quantiles(window), "count": window[-1][1] if window else 0.0},
            }
        info = snap.samples.get("socialpulse_model_info", [])
        return {
            "time": now,
            "latency_window_s": round(now - baseline[0], 3) if baseline else 0.0,
            "posts_consumed_total": snap.total("socialpulse_posts_consumed_total"),
            "posts_delivered_total": snap.total("socialpulse_posts_delivered_total"),
            "events_produced_total": snap.total("socialpulse_events_produced_total"),
            "dlq_records_total": snap.total("socialpulse_dlq_records_total"),
            "dlq_by_reason": snap.by_label("socialpulse_dlq_records_total", "reason"),
            "worker_up": snap.total("socialpulse_worker_up"),
            # One per model the worker serves, with the languages routed to it.
            "models": [labels for labels, _ in info],
            "throughput_posts_per_s": self.live.throughput(now, self.rate_window_s),
            "throughput_window_s": self.rate_window_s,
            "throughput_series": self.live.series(now, 60),
            "latency_seconds": latency,
            "sentiment_window_s": self.live.window_s,
            "sentiment_by_brand": self.live.sentiment_mix(now),
            "language_mix": self.live.language_mix(now),
            "alerts": self.alerts.snapshot(),
            "brand_timeline": self.timeline.snapshot(),
        }


# --- Faust web routes -----------------------------------------------------------------------------


def register_web(
    app: faust.App,
    metrics: Metrics,
    live: LiveStats,
    *,
    alerts: RecentAlerts | None = None,
    timeline: BrandTimeline | None = None,
    summary: Summary | None = None,
) -> Summary:
    """Add `/`, `/api/summary` and `/metrics` to the app's web server.

    Call before the worker starts: Faust mounts its own index at `/` when the server starts, and
    aiohttp serves the route registered first.
    """
    builder = summary or Summary(metrics, live, alerts=alerts, timeline=timeline)
    page = (STATIC_DIR / "live.html").read_bytes()
    assets = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_TYPES}

    class LivePage(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return self.bytes(page, content_type="text/html", headers={"Cache-Control": "no-store"})

    class StaticAsset(web.View):
        async def get(self, request: web.Request, name: str) -> web.Response:
            if name not in assets:
                raise self.NotFound(f"no static file {name!r}")
            return self.bytes(assets[name], content_type=STATIC_TYPES[name], headers={"Cache-Control": "no-store"})

    class SummaryView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            body = orjson.dumps(builder.build())
            return self.bytes(body, content_type="application/json", headers={"Cache-Control": "no-store"})

    class MetricsView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            # The type carries a charset, which aiohttp refuses in content_type=.
            return self.bytes(generate_latest(metrics.registry), headers={"Content-Type": EXPOSITION_CONTENT_TYPE})

    app.page("/", name="socialpulse_live")(LivePage)
    app.page("/static/{name}", name="socialpulse_static")(StaticAsset)
    app.page("/api/summary", name="socialpulse_summary")(SummaryView)
    app.page("/metrics", name="socialpulse_metrics")(MetricsView)
    return builder


# --- standalone exporter --------------------------------------------------------------------------


@dataclass(slots=True)
class MetricsServer:
    """The prometheus_client exporter thread, for scraping without Faust's web server."""

    host: str
    port: int
    _shutdown: Callable[[], None]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._shutdown()


def start_metrics_server(settings: Settings, metrics: Metrics) -> MetricsServer | None:
    """Serve metrics.registry on settings.metrics_host:metrics_port; None when the port is 0 (disabled)."""
    if settings.metrics_port == 0:
        return None
    server, thread = start_http_server(settings.metrics_port, settings.metrics_host, registry=metrics.registry)

    def shutdown() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return MetricsServer(settings.metrics_host, server.server_port, shutdown)
