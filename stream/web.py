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
from typing import Any

import faust
import orjson
from faust import web
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from stream.metrics import Metrics
from stream.settings import Settings

QUANTILES = (0.5, 0.95, 0.99)
# generate_latest writes the classic text format; newer clients label it version=1.0.0, which
# older Prometheus servers don't negotiate, so announce what prometheus_client's own exporter does.
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
E2E_HISTOGRAMS = {
    "created": "socialpulse_e2e_created_latency_seconds",
    "ingest": "socialpulse_e2e_ingest_latency_seconds",
}


@dataclass(slots=True)
class _Slot:
    second: int = -1
    posts: int = 0
    mix: dict[tuple[str, str], int] = field(default_factory=dict)


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

    def record_batch(self, now_s: float, *, posts: int, brands_sentiments: Iterable[tuple[str, str]] = ()) -> None:
        second = int(now_s)
        with self._lock:
            slot = self._slots[second % self.window_s]
            if slot.second != second:
                slot.second, slot.posts = second, 0
                slot.mix.clear()
            slot.posts += posts
            for key in brands_sentiments:
                slot.mix[key] = slot.mix.get(key, 0) + 1
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
        latency_window_s: float = 60.0,
        rate_window_s: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.live = live
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
            "model": info[0][0] if info else {},
            "throughput_posts_per_s": self.live.throughput(now, self.rate_window_s),
            "throughput_window_s": self.rate_window_s,
            "throughput_series": self.live.series(now, 60),
            "latency_seconds": latency,
            "sentiment_window_s": self.live.window_s,
            "sentiment_by_brand": self.live.sentiment_mix(now),
        }


# --- Faust web routes -----------------------------------------------------------------------------


def register_web(app: faust.App, metrics: Metrics, live: LiveStats, *, summary: Summary | None = None) -> Summary:
    """Add `/`, `/api/summary` and `/metrics` to the app's web server.

    Call before the worker starts: Faust mounts its own index at `/` when the server starts, and
    aiohttp serves the route registered first.
    """
    builder = summary or Summary(metrics, live)
    page = LIVE_PAGE_HTML.encode()

    class LivePage(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return self.bytes(page, content_type="text/html", headers={"Cache-Control": "no-store"})

    class SummaryView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            body = orjson.dumps(builder.build())
            return self.bytes(body, content_type="application/json", headers={"Cache-Control": "no-store"})

    class MetricsView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            # The type carries a charset, which aiohttp refuses in content_type=.
            return self.bytes(generate_latest(metrics.registry), headers={"Content-Type": EXPOSITION_CONTENT_TYPE})

    app.page("/", name="socialpulse_live")(LivePage)
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


LIVE_PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>socialpulse live</title>
<style>
  :root { --fg:#1d2330; --muted:#6b7384; --bg:#f6f7f9; --card:#fff; --line:#e3e6eb; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 "DejaVu Sans", system-ui, sans-serif; color:var(--fg); background:var(--bg); }
  header { display:flex; align-items:baseline; gap:16px; padding:14px 22px; background:#1d2330; color:#fff; }
  header h1 { margin:0; font-size:18px; }
  header .meta { color:#aab2c3; font-size:12px; }
  #status.down { color:#ff8a80; }
  main { display:grid; grid-template-columns:repeat(auto-fit, minmax(300px, 1fr)); gap:16px; padding:18px 22px; }
  .card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px; }
  .card h2 { margin:0 0 10px; font-size:13px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
  .big { font-size:30px; font-weight:600; }
  .unit { font-size:13px; color:var(--muted); margin-left:4px; }
  table { width:100%; border-collapse:collapse; }
  td, th { padding:4px 6px; text-align:right; border-bottom:1px solid var(--line); }
  td:first-child, th:first-child { text-align:left; }
  th { color:var(--muted); font-weight:normal; font-size:12px; }
  canvas { width:100%; height:70px; display:block; margin-top:8px; }
  .bar { display:flex; height:14px; border-radius:3px; overflow:hidden; background:var(--line); min-width:120px; }
  .bar span { display:block; height:100%; }
  .legend span { display:inline-block; margin-right:10px; font-size:12px; }
  .legend i { display:inline-block; width:10px; height:10px; margin-right:4px; border-radius:2px; }
  .wide { grid-column:1 / -1; }
  .muted { color:var(--muted); font-size:12px; }
</style>
</head>
<body>
<header>
  <h1>socialpulse</h1>
  <span class="meta" id="model">model: -</span>
  <span class="meta" id="status">connecting...</span>
</header>
<main>
  <section class="card">
    <h2>Throughput</h2>
    <div><span class="big" id="throughput" data-value="">-</span><span class="unit">posts/s</span></div>
    <div class="muted">over the last <span id="throughput-window">-</span> s; per second, last 60 s:</div>
    <canvas id="spark" width="600" height="140"></canvas>
  </section>
  <section class="card">
    <h2>Totals since start</h2>
    <table>
      <tr><td>Posts consumed</td><td id="posts-total" data-value="">-</td></tr>
      <tr><td>Events produced</td><td id="events-total" data-value="">-</td></tr>
      <tr><td>Dead-lettered</td><td id="dlq-total" data-value="">-</td></tr>
    </table>
    <div class="muted" id="dlq-reasons"></div>
  </section>
  <section class="card">
    <h2>End-to-end latency (created &rarr; produced)</h2>
    <table>
      <tr><th></th><th>last <span id="latency-window">-</span> s</th><th>since start</th></tr>
      <tr><td>p50</td><td id="p50" data-value="">-</td><td id="p50-total" data-value="">-</td></tr>
      <tr><td>p95</td><td id="p95" data-value="">-</td><td id="p95-total" data-value="">-</td></tr>
      <tr><td>p99</td><td id="p99" data-value="">-</td><td id="p99-total" data-value="">-</td></tr>
    </table>
    <div class="muted">ingest &rarr; produced p99: <span id="p99-ingest" data-value="">-</span> (since start)</div>
  </section>
  <section class="card wide">
    <h2>Sentiment mix per brand, last <span id="sentiment-window">-</span> s</h2>
    <div class="legend" id="legend"></div>
    <table id="brands"><thead><tr><th>brand</th><th>posts</th><th>mix</th><th>counts</th></tr></thead>
    <tbody></tbody></table>
  </section>
</main>
<script>
"use strict";
const COLORS = {negative:"#d9534f", neutral:"#9aa3b2", positive:"#3a9d5d"};
const PALETTE = ["#4e79a7","#f28e2b","#76b7b2","#edc948","#b07aa1","#ff9da7","#9c755f"];
function color(label) {
  if (COLORS[label]) return COLORS[label];
  let h = 0; for (const ch of label) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}
function setNum(id, value, text) {
  const el = document.getElementById(id);
  el.dataset.value = value === null || value === undefined ? "" : String(value);
  el.textContent = text;
}
function fmtCount(v) { return Math.round(v).toLocaleString("en-US"); }
function fmtLatency(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}
function drawSpark(series) {
  const c = document.getElementById("spark"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const max = Math.max(1, ...series), w = c.width / Math.max(1, series.length);
  g.fillStyle = "#4e79a7";
  series.forEach((v, i) => { const h = (v / max) * (c.height - 4); g.fillRect(i * w + 1, c.height - h, w - 2, h); });
}
function renderBrands(mix) {
  const tbody = document.querySelector("#brands tbody");
  const labels = new Set();
  const rows = Object.entries(mix).map(([brand, counts]) => {
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    Object.keys(counts).forEach(l => labels.add(l));
    return {brand, counts, total};
  }).sort((a, b) => b.total - a.total || a.brand.localeCompare(b.brand));
  tbody.replaceChildren(...rows.map(({brand, counts, total}) => {
    const tr = document.createElement("tr");
    tr.dataset.brand = brand;
    const name = document.createElement("td"); name.textContent = brand;
    const n = document.createElement("td"); n.textContent = fmtCount(total); n.className = "brand-total";
    const bar = document.createElement("td"); const div = document.createElement("div"); div.className = "bar";
    const detail = document.createElement("td"); detail.className = "muted";
    const parts = [];
    for (const [label, c] of Object.entries(counts).sort()) {
      const s = document.createElement("span");
      s.style.width = (100 * c / total) + "%"; s.style.background = color(label); s.title = label + ": " + c;
      div.appendChild(s); parts.push(label + " " + c);
    }
    bar.appendChild(div); detail.textContent = parts.join(", ");
    tr.append(name, n, bar, detail);
    return tr;
  }));
  document.getElementById("legend").replaceChildren(...[...labels].sort().map(l => {
    const s = document.createElement("span"); const i = document.createElement("i");
    i.style.background = color(l); s.append(i, l); return s;
  }));
}
function render(d) {
  setNum("throughput", d.throughput_posts_per_s, d.throughput_posts_per_s.toFixed(1));
  document.getElementById("throughput-window").textContent = d.throughput_window_s;
  drawSpark(d.throughput_series);
  setNum("posts-total", d.posts_consumed_total, fmtCount(d.posts_consumed_total));
  setNum("events-total", d.events_produced_total, fmtCount(d.events_produced_total));
  setNum("dlq-total", d.dlq_records_total, fmtCount(d.dlq_records_total));
  document.getElementById("dlq-reasons").textContent = Object.entries(d.dlq_by_reason)
    .filter(([, v]) => v > 0).map(([r, v]) => r + ": " + fmtCount(v)).join(", ");
  const lat = d.latency_seconds.created;
  document.getElementById("latency-window").textContent = Math.round(d.latency_window_s);
  for (const p of ["p50", "p95", "p99"]) {
    setNum(p, lat.window[p], fmtLatency(lat.window[p]));
    setNum(p + "-total", lat.since_start[p], fmtLatency(lat.since_start[p]));
  }
  const ingest = d.latency_seconds.ingest.since_start.p99;
  setNum("p99-ingest", ingest, fmtLatency(ingest));
  document.getElementById("sentiment-window").textContent = d.sentiment_window_s;
  renderBrands(d.sentiment_by_brand);
  const m = d.model;
  const parts = Object.values(m).filter(Boolean);
  document.getElementById("model").textContent = "model: " + (parts.length ? parts.join(" / ") : "-");
  const st = document.getElementById("status");
  st.textContent = (d.worker_up >= 1 ? "worker up" : "worker not processing") + " - updated "
    + new Date(d.time * 1000).toLocaleTimeString("en-GB");
  st.className = d.worker_up >= 1 ? "meta" : "meta down";
  document.body.dataset.updated = String(d.time);
}
async function poll() {
  try {
    const r = await fetch("api/summary", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    const st = document.getElementById("status"); st.textContent = "no data: " + e.message; st.className = "meta down";
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
"""
