"""The live page in headless Chromium (Debian chromium + chromedriver via selenium): served by a real
Faust web server, it must show the numbers /metrics exports, including percentiles interpolated from
the same histogram. SOCIALPULSE_UPDATE_SCREENSHOT=1 writes the screenshot to docs/live-page.png."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faust
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.metrics import Metrics
from stream.web import LiveStats, histogram_quantile, register_web

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
BRANDS = {"acme": {"positive": 25, "negative": 15, "neutral": 10}, "globex": {"negative": 12, "neutral": 6}}
RATE = 12  # posts per second fed to LiveStats


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LiveServer:
    url: str
    metrics: Metrics
    live: LiveStats

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return str(r.read().decode())


@pytest.fixture
def live_server() -> Iterator[LiveServer]:
    """A real Faust app's aiohttp web server on a free port, on its own loop thread (no broker needed)."""
    metrics, live = Metrics(), LiveStats(window_s=300)
    port = free_port()
    started, stop = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    async def serve() -> None:
        app = faust.App("socialpulse-live-test", broker="kafka://127.0.0.1:1", web_bind="127.0.0.1", web_port=port)
        register_web(app, metrics, live)
        await app.web.start()
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await app.web.stop()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by the fixture, not lost in the thread
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="live-web", daemon=True)
    thread.start()
    assert started.wait(30), "web server did not start"
    assert not errors, errors
    yield LiveServer(f"http://127.0.0.1:{port}", metrics, live)
    stop.set()
    thread.join(30)
    assert not errors, errors


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.fail(f"{path} missing: run scripts/system-deps.sh (Debian chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # The network is closed: Selenium Manager must not try to fetch drivers.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def buckets(parsed: dict[str, list[tuple[dict[str, str], float]]], histogram: str) -> list[tuple[float, float]]:
    return sorted((float(labels["le"]), v) for labels, v in parsed[f"{histogram}_bucket"])


def total(parsed: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(v for _, v in parsed.get(name, []))


def fmt_latency(seconds: float | None) -> str:
    """The page's fmtLatency, for comparing the displayed text."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.{2 if seconds < 0.01 else 1}f} ms"
    return f"{seconds:.2f} s"


def wait_until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("page did not update in time")
        time.sleep(0.1)


def feed_live(live: LiveStats, now: float) -> None:
    """RATE posts/s from 60 s ago to 60 s ahead (the page's rate then holds whenever it polls); the brand
    mix only in the past, so the page's 5-minute window holds all of it."""
    pairs = [(brand, label) for brand, mix in BRANDS.items() for label, n in mix.items() for _ in range(n)]
    for k, second in enumerate(range(int(now) - 60, int(now) + 60)):
        mentions = pairs[k * 4 : k * 4 + 4] if second < int(now) else []
        live.record_batch(second + 0.5, posts=RATE, brands_sentiments=mentions)
    assert sum(len(pairs[k * 4 : k * 4 + 4]) for k in range(60)) == len(pairs)


def test_live_page_matches_metrics(live_server: LiveServer, browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    m = live_server.metrics
    m.worker_up.set(1)
    m.model_info.info({"name": "minilm-multitask", "version": "2026.11", "variant": "int8"})
    for v in (0.004, 0.006, 0.012, 0.03, 0.05, 0.08, 0.2, 0.9, 1.7, 3.0):
        m.e2e_created.observe(v)
        m.e2e_ingest.observe(v / 2)
    m.posts_consumed.inc(1000)
    m.dlq_records.labels("invalid_json").inc(4)
    for brand, mix in BRANDS.items():
        m.brand_posts.labels(brand).inc(sum(mix.values()))
        for label, n in mix.items():
            m.brand_sentiment.labels(brand, label).inc(n)
    feed_live(live_server.live, time.time())

    browser.get(live_server.url + "/")
    value = lambda element_id: browser.find_element(By.ID, element_id).get_attribute("data-value")  # noqa: E731
    text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
    wait_until(lambda: value("posts-total") == "1000")
    # The page's first poll is the baseline of its windowed percentiles; nothing is observed in between.
    before = samples(live_server.get("/metrics"))

    # Second wave, after the baseline: the window shows only these, "since start" shows both.
    for v in (0.0015, 0.002, 0.0035, 0.007, 0.009, 0.015, 0.022, 0.04, 0.3, 12.0):
        m.e2e_created.observe(v)
    for topic, label, n in (("social.sentiment", "positive", 700), ("social.sentiment", "negative", 290)):
        m.events_produced.labels(topic, label).inc(n)
    m.posts_consumed.inc(234)
    m.dlq_records.labels("duplicate_id").inc(2)
    wait_until(lambda: value("posts-total") == "1234" and value("events-total") == "990")
    after = samples(live_server.get("/metrics"))

    assert float(value("posts-total")) == total(after, "socialpulse_posts_consumed_total") == 1234
    assert text("posts-total") == "1,234"
    assert float(value("events-total")) == total(after, "socialpulse_events_produced_total")
    assert float(value("dlq-total")) == total(after, "socialpulse_dlq_records_total") == 6
    assert "invalid_json: 4" in text("dlq-reasons") and "duplicate_id: 2" in text("dlq-reasons")

    created = "socialpulse_e2e_created_latency_seconds"
    since_start = buckets(after, created)
    window = [(le, c - dict(buckets(before, created))[le]) for le, c in since_start]
    assert window[-1][1] == 10
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        expected_window, expected_total = histogram_quantile(q, window), histogram_quantile(q, since_start)
        assert expected_window is not None and expected_total is not None
        assert float(value(name)) == pytest.approx(expected_window, rel=1e-12), name
        assert float(value(f"{name}-total")) == pytest.approx(expected_total, rel=1e-12), name
        assert text(name) == fmt_latency(expected_window)
        assert text(f"{name}-total") == fmt_latency(expected_total)
    ingest_p99 = histogram_quantile(0.99, buckets(after, "socialpulse_e2e_ingest_latency_seconds"))
    assert float(value("p99-ingest")) == pytest.approx(ingest_p99, rel=1e-12)

    assert float(value("throughput")) == RATE
    assert text("throughput") == f"{RATE:.1f}"

    rows = browser.find_elements(By.CSS_SELECTOR, "#brands tbody tr")
    shown = {row.get_attribute("data-brand"): row.find_element(By.CSS_SELECTOR, ".brand-total").text for row in rows}
    exported: dict[str, dict[str, float]] = {}
    for labels, v in after["socialpulse_brand_sentiment_total"]:
        exported.setdefault(labels["brand"], {})[labels["sentiment"]] = v
    assert shown == {brand: str(int(sum(mix.values()))) for brand, mix in exported.items()}
    for row in rows:
        mix = exported[str(row.get_attribute("data-brand"))]
        detail = row.find_elements(By.CSS_SELECTOR, "td")[3].text
        assert detail == ", ".join(f"{label} {int(n)}" for label, n in sorted(mix.items()))
    assert "minilm-multitask" in text("model") and "worker up" in text("status")

    target = (
        REPO / "docs/live-page.png"
        if os.environ.get("SOCIALPULSE_UPDATE_SCREENSHOT") == "1"
        else tmp_path / "live-page.png"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(target))
    assert target.stat().st_size > 20_000, "screenshot looks empty"
