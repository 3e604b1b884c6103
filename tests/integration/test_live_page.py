"""The live page of a running worker in headless Chromium (Debian chromium + chromedriver via selenium):
it must show the numbers the same worker's /metrics exports, including percentiles interpolated from the
same histograms, while a second wave of posts goes through; and a brand crisis firing and resolving.
SOCIALPULSE_UPDATE_SCREENSHOT=1 writes the screenshot to docs/live-page.png."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from stream.tools.demo import DEMO_BURST_BRAND, DEMO_MONITOR
from stream.tools.kafka_local import LocalKafka
from stream.tools.replay import replay
from stream.tools.sample_posts import NegativeBurst, labelled_stream, load_tweet_texts, write_jsonl
from stream.web import RegistrySnapshot, histogram_quantile
from tests.integration.harness import Topics, WorkerProcess
from tests.integration.worker_fixtures import RunningWorker, fresh_stream, scrape

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
WAVE = 300
# The page's windowed percentiles diff against its first poll for up to 60 s (Summary.latency_window_s).
WINDOW_S = 60.0
CREATED = "socialpulse_e2e_created_latency_seconds"
INGEST = "socialpulse_e2e_ingest_latency_seconds"


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


def fmt_latency(seconds: float | None) -> str:
    """The page's fmtLatency, for comparing the displayed text."""
    if seconds is None:
        return "-"
    # JS toFixed rounds an exact tie (e.g. 29.625) up where Python's format rounds it to even.
    if seconds < 1:
        return f"{_to_fixed(seconds * 1000, 2 if seconds < 0.01 else 1)} ms"
    return f"{_to_fixed(seconds, 2)} s"


def _to_fixed(x: float, digits: int) -> str:
    """JS Number.prototype.toFixed for non-negative x."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def wait_until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("page did not update in time")
        time.sleep(0.1)


def test_live_page_matches_metrics(running_worker: RunningWorker, browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    page = browser

    def value(element_id: str) -> str:
        return str(page.find_element(By.ID, element_id).get_attribute("data-value") or "")

    def text(element_id: str) -> str:
        return str(page.find_element(By.ID, element_id).text)

    def shows(snap: RegistrySnapshot) -> bool:
        return (
            value("posts-total") == f"{snap.total('socialpulse_posts_consumed_total'):.0f}"
            and value("events-total") == f"{snap.total('socialpulse_events_produced_total'):.0f}"
        )

    # The worker is idle: the page's first poll, the baseline of its windowed percentiles, sees `before`.
    before = scrape(running_worker.web_url("/metrics"))
    opened = time.monotonic()
    browser.get(running_worker.web_url("/"))
    wait_until(lambda: shows(before))

    # A second wave while the page polls: its window shows only these posts, "since start" shows all.
    wave = fresh_stream(WAVE, seed=37)
    running_worker.send(wave, settle_lag=False)
    after = scrape(running_worker.web_url("/metrics"))
    wait_until(lambda: shows(after))
    elapsed = time.monotonic() - opened
    assert elapsed < WINDOW_S - 5, f"the wave took {elapsed:.0f}s: the page's window no longer starts at its first poll"

    assert float(value("posts-total")) == after.total("socialpulse_posts_consumed_total") == len(running_worker.records)
    assert text("posts-total") == f"{len(running_worker.records):,}"
    assert float(value("events-total")) == after.total("socialpulse_events_produced_total")
    assert text("events-total") == f"{after.total('socialpulse_events_produced_total'):,.0f}"
    dlq = after.by_label("socialpulse_dlq_records_total", "reason")
    assert float(value("dlq-total")) == sum(dlq.values()) == sum(running_worker.expected_dlq.values())
    assert text("dlq-reasons").split(", ") == [f"{reason}: {n:,.0f}" for reason, n in dlq.items() if n > 0]

    since_start = after.buckets(CREATED)
    window = [(le, c - dict(before.buckets(CREATED))[le]) for le, c in since_start]
    assert window[-1][1] == len([r for r in wave if r.expected is None])
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        expected_window, expected_total = histogram_quantile(q, window), histogram_quantile(q, since_start)
        assert expected_window is not None and expected_total is not None
        assert float(value(name)) == pytest.approx(expected_window, rel=1e-12), name
        assert float(value(f"{name}-total")) == pytest.approx(expected_total, rel=1e-12), name
        assert text(name) == fmt_latency(expected_window)
        assert text(f"{name}-total") == fmt_latency(expected_total)
    ingest_p99 = histogram_quantile(0.99, after.buckets(INGEST))
    assert ingest_p99 is not None
    assert float(value("p99-ingest")) == pytest.approx(ingest_p99, rel=1e-12)
    assert text("p99-ingest") == fmt_latency(ingest_p99)

    # The page's mix covers its last 5 minutes; the worker processed everything within them.
    exported: dict[str, dict[str, float]] = {}
    for labels, n in after.samples["socialpulse_brand_sentiment_total"]:
        exported.setdefault(labels["brand"], {})[labels["sentiment"]] = n
    assert set(exported) == set(running_worker.expected_brand_posts)
    # One script reads the whole table: each poll replaces its rows, so elements found earlier go stale.
    rows = page.execute_script(
        "return [...document.querySelectorAll('#brands tbody tr')]"
        ".map(tr => [tr.dataset.brand, tr.querySelector('.brand-total').textContent, tr.cells[3].textContent])"
    )
    assert {brand: total for brand, total, _ in rows} == {
        brand: f"{sum(mix.values()):,.0f}" for brand, mix in exported.items()
    }
    for brand, _, detail in rows:
        assert detail == ", ".join(f"{label} {n:.0f}" for label, n in sorted(exported[brand].items())), brand

    # Every post of the fixture's streams is English; all were delivered within the page's window.
    languages = page.execute_script(
        "return [...document.querySelectorAll('#languages tbody tr')]"
        ".map(tr => [tr.dataset.language, tr.querySelector('.language-posts').textContent])"
    )
    assert languages == [["en", f"{after.total('socialpulse_posts_delivered_total'):,.0f}"]]

    # One entry per model the worker serves; the exposition sorts labels, the page keeps the registry's order.
    models = [sorted(v for v in labels.values() if v) for labels, _ in after.samples["socialpulse_model_info"]]
    shown = [sorted(part.split(" / ")) for part in text("model").removeprefix("model: ").split("; ")]
    assert sorted(shown) == sorted(models)
    assert text("status").startswith("worker up")

    target = (
        REPO / "docs/live-page.png"
        if os.environ.get("SOCIALPULSE_UPDATE_SCREENSHOT") == "1"
        else tmp_path / "live-page.png"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(target))
    assert target.stat().st_size > 20_000, "screenshot looks empty"
    # Later tests get the worker as the fixture hands it out: idle and caught up.
    running_worker.settle_lag()


def test_live_page_shows_a_brand_crisis_fire_and_resolve(kafka: LocalKafka, browser: object, tmp_path: Path) -> None:
    """The demo's brand monitor settings and negative burst, replayed live: the alerts panel shows the burst's
    brand firing while the burst lasts, then the same incident resolved."""
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    topics = Topics()
    brands_file = str(REPO / "deploy/brands/demo.yaml")
    worker = WorkerProcess(
        kafka.bootstrap, topics, tmp_path, "alerts-worker", SOCIALPULSE_BRANDS_FILE=brands_file, **DEMO_MONITOR
    ).start()
    burst = NegativeBurst(DEMO_BURST_BRAND, load_tweet_texts(max_score=-1.0))
    records = labelled_stream(load_tweet_texts(), 6_000, malformed_share=0.0, seed=43, burst=burst)
    posts = write_jsonl(records, tmp_path / "posts.jsonl")
    # As the demo replays: live, created_at the send time, so event time moves with the wall clock.
    sending = threading.Thread(
        target=lambda: asyncio.run(replay(posts, topics.posts, kafka.bootstrap, 100.0, show_progress=False))
    )

    def incidents(status: tuple[str, ...]) -> list[str]:
        return list(
            browser.execute_script(
                "return [...document.querySelectorAll('#alerts li')]"
                ".filter(li => li.dataset.brand === arguments[0] && arguments[1].includes(li.dataset.status))"
                ".map(li => li.dataset.alertId)",
                DEMO_BURST_BRAND,
                list(status),
            )
        )

    try:
        worker.wait_ready()
        browser.get(f"http://127.0.0.1:{worker.web_port}/")
        sending.start()
        wait_until(lambda: bool(incidents(("firing", "escalated"))), timeout_s=120)
        (alert_id,) = incidents(("firing", "escalated"))
        wait_until(lambda: alert_id in incidents(("resolved",)), timeout_s=120)
        shown = browser.execute_script("return document.getElementById('alerts').innerText")
        charted = str(browser.execute_script("return document.getElementById('timeline').dataset.brands"))
    finally:
        sending.join()
        assert worker.stop() == 0, worker.log_tail()
    assert DEMO_BURST_BRAND in shown and "z " in shown, shown
    # The sentiment-over-time chart draws every demo brand's closed windows, the burst's brand among them.
    assert {"Acme", "Globex", "Initech", "Umbrella"} <= set(charted.split(",")), charted
    print(f"live page alerts panel:\n{shown}")
