"""A real Alertmanager (Debian's `prometheus-alertmanager`) behind the brand monitor's webhook: a negative burst
for one brand must show in Alertmanager as an active crisis with our labels and annotations, and the monitor's
resolve must end it there at the resolving window's end, while every mention is counted in the window stats
and the alerts are on the alerts topic. Also with event time two hours behind the wall clock (a worker
catching up on a backlog), and for an incident that opens as a negativity spike and escalates to a crisis."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml
from aiohttp import web

from stream.brands.model import Alert, AuthorEscalation
from stream.brands.synthetic import Burst, StreamSpec
from stream.brands.webhook import alertmanager_alerts
from stream.emit import now_ms
from stream.tools.kafka_local import LocalKafka
from tests.integration.brand_streams import (
    MINUTE,
    OutputUnion,
    brand_env,
    create_topics,
    expected_stats,
    mentions_for,
    produce,
    read_records,
    read_stats,
    reference_outputs,
    start_worker,
    with_sentinels,
)
from tests.integration.harness import free_port, served, wait_for_commits

RECEIVER = "socialpulse-test"
HOUR = 3_600_000


def ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp() * 1000)


@dataclass
class Alertmanager:
    url: str
    log: Path
    # The notifications Alertmanager sent to its webhook receiver (this test), as posted.
    notifications: list[dict[str, Any]] = field(default_factory=list)

    async def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts with every filter on: all it holds, except alerts whose endsAt has passed (the v2
        API never lists those, whatever the filters)."""
        params = {"active": "true", "silenced": "true", "inhibited": "true", "unprocessed": "true"}
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/api/v2/alerts", params=params) as got:
            assert got.status == 200, await got.text()
            alerts: list[dict[str, Any]] = await got.json()
            return alerts

    def notified(self, labels: dict[str, str], status: str) -> list[dict[str, Any]]:
        """The alerts with these labels and status in the notifications so far."""
        return [
            alert
            for notification in self.notifications
            for alert in notification["alerts"]
            if alert["labels"] == labels and alert["status"] == status
        ]

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
async def alertmanager(tmp_path: Path) -> AsyncIterator[Alertmanager]:
    async def receive(request: web.Request) -> web.Response:
        server.notifications.append(await request.json())
        return web.Response()

    receiver_app = web.Application()
    receiver_app.router.add_post("/notify", receive)
    runner = web.AppRunner(receiver_app)
    await runner.setup()
    receiver_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", receiver_port).start()

    config = {
        # Our alerts always carry endsAt, so resolve_timeout never applies; a 1 s group wait and interval
        # notify the firing and the resolved alert within seconds.
        "route": {"receiver": RECEIVER, "group_by": ["alert_id"], "group_wait": "1s", "group_interval": "1s"},
        "receivers": [
            {
                "name": RECEIVER,
                "webhook_configs": [{"url": f"http://127.0.0.1:{receiver_port}/notify", "send_resolved": True}],
            }
        ],
    }
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    server = Alertmanager(f"http://{address}", tmp_path / "alertmanager.log")
    args = [
        f"--config.file={tmp_path / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'alertmanager-data'}",
        f"--web.listen-address={address}",
        "--cluster.listen-address=",  # a lone instance: no gossip port
        "--log.level=debug",
    ]
    try:
        with served("prometheus-alertmanager", "prometheus-alertmanager", args, f"{server.url}/-/ready", server.log):
            yield server
    finally:
        await runner.cleanup()


async def eventually(what: str, check: Callable[[], Any], timeout: float, tail: Callable[[], str]) -> Any:
    """Poll `check` (plain or async) until it returns something truthy; fail with `what` and `tail()` if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.5)
    pytest.fail(f"{what} within {timeout}s:\n{tail()}")


# Alertmanager's view of an alert: its labels by kind (alertname, severity).
LABELS = {
    "crisis": ("BrandCrisis", "critical"),
    "negativity_spike": ("BrandNegativitySpike", "warning"),
    "volume_spike": ("BrandVolumeSpike", "warning"),
}


def labels(alert: Alert, kind: str) -> dict[str, str]:
    alertname, severity = LABELS[kind]
    return {
        "alertname": alertname,
        "brand": alert.brand,
        "kind": kind,
        "severity": severity,
        "alert_id": alert.alert_id,
    }


@dataclass(frozen=True)
class Scenario:
    minutes: int
    bursts: list[Burst]
    # (status, kind) of the alerts an uninterrupted monitor raises for the stream.
    alerts: list[tuple[str, str]]
    # How far event time trails the wall clock, as when a worker catches up on a backlog after an outage:
    # Alertmanager decides what is active by its own clock.
    behind_h: int = 0


# Negative posts at four times the brand's usual volume: a crisis at once.
CRISIS = Scenario(24, [Burst("Acme", 18.0, minutes=2, per_minute=60)], [("firing", "crisis"), ("resolved", "crisis")])
SCENARIOS = {
    "crisis-live": CRISIS,
    "crisis-two-hours-behind": replace(CRISIS, behind_h=2),
    # A milder negative burst first: a negativity spike, which the strong one escalates to a crisis.
    "escalated-live": Scenario(
        26,
        [Burst("Acme", 17.0, minutes=3, per_minute=8), Burst("Acme", 20.0, minutes=2, per_minute=60)],
        [("firing", "negativity_spike"), ("escalated", "crisis"), ("resolved", "crisis")],
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_a_crisis_fires_and_resolves_in_a_real_alertmanager(
    kafka: LocalKafka, alertmanager: Alertmanager, tmp_path: Path, scenario: Scenario
) -> None:
    now = now_ms()
    # The stream ends a minute before now (less `behind_h`): the resolving window has ended when its resolve
    # is posted, as on a live stream.
    start = now - now % MINUTE - (scenario.minutes + 1) * MINUTE - scenario.behind_h * HOUR
    spec = StreamSpec(minutes=scenario.minutes, seed=0, per_minute=15, start_ms=start, bursts=scenario.bursts)
    mentions = mentions_for(spec)
    stream, end = with_sentinels(mentions)
    reference = reference_outputs(stream)
    alerts = [o for o in reference if isinstance(o, Alert)]
    assert [(a.status, a.kind) for a in alerts] == scenario.alerts and {a.brand for a in alerts} == {"Acme"}
    first, last, resolved = alerts[0], alerts[-2], alerts[-1]
    expected = expected_stats(stream, end + 10 * MINUTE)

    env, settings = brand_env(kafka.bootstrap)
    env["SOCIALPULSE_BRANDS_WEBHOOK_URL"] = alertmanager.url
    await create_topics(kafka.bootstrap, settings)
    # First the baseline and the bursts up to a minute past the last window that alerted: the incident fires
    # and Alertmanager notifies it; the calm windows that resolve it follow once it has (a group notified only
    # as resolved is not notified at all).
    cut = next(i for i, m in enumerate(stream) if m.created_at >= last.window.end + MINUTE)
    await produce(kafka.bootstrap, settings.mentions_topic, stream[:cut])
    log = tmp_path / "worker.log"
    worker_started = now_ms()
    worker = start_worker(env, log)

    def tails() -> str:
        worker_tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        return f"worker:\n{worker_tail}\nalertmanager:\n{alertmanager.tail()}"

    async def listed_alone(want: dict[str, str]) -> list[dict[str, Any]]:
        listed = await alertmanager.alerts()
        return listed if [a["labels"] for a in listed] == [want] else []

    open_labels = labels(last, last.kind)
    try:
        # One alert per incident is active: an escalation ends its first kind's alert (other labels, so
        # another alert to Alertmanager).
        (active,) = await eventually(
            f"not {open_labels} alone active in Alertmanager", lambda: listed_alone(open_labels), 120, tails
        )
        posted_at = now_ms()
        await eventually("no firing notification", lambda: alertmanager.notified(open_labels, "firing"), 30, tails)
        superseded = []
        if first.kind != last.kind:
            superseded = await eventually(
                "the escalated alert's first kind not resolved",
                lambda: alertmanager.notified(labels(first, first.kind), "resolved"),
                30,
                tails,
            )

        await produce(kafka.bootstrap, settings.mentions_topic, stream[cut:])
        (notified,) = await eventually(
            "no resolved notification",
            lambda: alertmanager.notified(labels(resolved, resolved.kind), "resolved"),
            120,
            tails,
        )
        still_listed = await alertmanager.alerts()

        found = await read_stats(
            kafka.bootstrap, settings.brand_stats_topic, end + 10 * MINUTE, timeout=180, expect=set(expected)
        )
        expected_alerts = [o for o in reference if isinstance(o, Alert | AuthorEscalation)]
        on_topic = await read_records(kafka.bootstrap, settings.alerts_topic, len(expected_alerts), timeout=60)
        ends, committed = await wait_for_commits(
            kafka.bootstrap, env["SOCIALPULSE_APP_ID"], settings.mentions_topic, 60
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)

    (sent,) = [a for a in alertmanager_alerts(last, posted_at) if a["labels"] == open_labels]
    assert active["annotations"] == sent["annotations"], active
    assert set(active["annotations"]) == {"summary", "description", "top_terms", "example_posts"}
    assert active["annotations"]["top_terms"] and active["annotations"]["example_posts"], active
    assert active["status"]["state"] == "active" and [r["name"] for r in active["receivers"]] == [RECEIVER], active
    assert ms(active["startsAt"]) == first.started_at, active
    # Firing until the resolve: Alertmanager would end it by itself an hour after the post, whatever the
    # event time.
    assert worker_started + HOUR <= ms(active["endsAt"]) <= posted_at + HOUR, active
    for ended in superseded:
        assert ms(ended["endsAt"]) == last.window.end, ended

    assert ms(notified["startsAt"]) == first.started_at, notified
    assert ms(notified["endsAt"]) == resolved.window.end, notified
    assert still_listed == [], still_listed

    assert found == expected, tails()
    tumbling = [s for s in found.values() if s.window.kind == "tumbling"]
    assert sum(s.posts + s.flagged for s in tumbling) == len(mentions), "a mention was not counted"
    published = sorted(_normalised(r.value or b"") for r in on_topic)
    assert published == sorted(_normalised(msgspec.json.encode(o)) for o in expected_alerts), tails()
    assert all(committed.get(p, 0) >= offset for p, offset in ends.items()), (ends, committed, tails())


def _normalised(value: bytes) -> bytes:
    """An output as the topic carries it after a decode: the reference's int observations become floats."""
    return msgspec.json.encode(OutputUnion.decode(value))
