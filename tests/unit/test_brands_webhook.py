"""Alertmanager v2 webhook delivery against a local aiohttp server: payload shape, retries, backoff, giving up."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, get_args

import msgspec
import pytest
from aiohttp import web

from stream.brands.model import Alert, AlertKind, Example, Signal, TermLift, Window, severity_of
from stream.brands.webhook import ALERT_NAMES, AlertmanagerWebhook, WebhookError, alertmanager_alerts
from stream.emit import now_ms

T0 = 1_767_225_600_000


def alert(status: str = "firing") -> Alert:
    signal = Signal("negativity", 0.8, 0.25, 0.07, 7.8)
    return Alert(
        alert_id=f"Acme:crisis:{T0}",
        status=status,  # type: ignore[arg-type]
        brand="Acme",
        kind="crisis",
        severity="critical",
        window=Window("tumbling", T0, T0 + 60_000),
        metric="negativity",
        observed=0.8,
        baseline_mean=0.25,
        baseline_std=0.07,
        z=7.8,
        signals=[Signal("volume", 60, 20, 4.5, 8.9), signal],
        started_at=T0,
        examples=[Example("p1", "a1", 9000, "acme broke again", "negative", -0.9)],
        top_terms=[TermLift("refund", 12, 0.2, 0.01, 20.0)],
    )


class Receiver:
    def __init__(self, failures: int, status: int = 503) -> None:
        self.failures = failures
        self.status = status
        self.bodies: list[Any] = []
        self.authorizations: list[str] = []
        self.times: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.authorizations.append(request.headers.get("Authorization", ""))
        self.times.append(time.monotonic())
        if len(self.bodies) <= self.failures:
            return web.Response(status=self.status, text="busy")
        return web.Response(status=200)


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(receiver: Receiver) -> str:
        app = web.Application()
        app.router.add_post("/api/v2/alerts", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_posts_the_alertmanager_v2_shape_and_retries_with_backoff(serve: Any) -> None:
    receiver = Receiver(failures=2)
    webhook = AlertmanagerWebhook(await serve(receiver), retries=3, backoff_s=0.1)
    before = now_ms()
    try:
        assert await webhook.send([alert()]) == 3
    finally:
        await webhook.close()
    after = now_ms()
    assert len(receiver.bodies) == 3
    gaps = [b - a for a, b in zip(receiver.times, receiver.times[1:], strict=False)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # exponential backoff
    (posted,) = receiver.bodies[-1]
    assert posted["labels"] == {
        "alertname": "BrandCrisis",
        "brand": "Acme",
        "kind": "crisis",
        "severity": "critical",
        "alert_id": f"Acme:crisis:{T0}",
    }
    assert posted["startsAt"] == "2026-01-01T00:00:00Z"
    # The window is long past: the firing TTL runs from the post, by the wall clock Alertmanager keeps.
    ends = datetime.fromisoformat(posted["endsAt"]).timestamp() * 1000
    assert before + 3_600_000 - 1 <= ends <= after + 3_600_000
    assert posted["annotations"]["top_terms"] == "refund"
    assert posted["annotations"]["example_posts"] == "p1"
    assert "top_story" not in posted["annotations"]  # only an alert that names a story has one


def test_a_firing_alert_is_held_for_the_ttl_from_its_post_or_its_window_end_if_later() -> None:
    # Counted from the window end, a firing alert more than the TTL old (a worker catching up on a backlog)
    # reached Alertmanager already resolved and was never notified.
    two_hours_later = T0 + 60_000 + 2 * 3_600_000
    assert alertmanager_alerts(alert(), two_hours_later)[0]["endsAt"] == "2026-01-01T03:01:00Z"
    # Event time ahead of the wall clock (skewed post clocks): still never before the window it is about.
    assert alertmanager_alerts(alert(), T0 - 3_600_000, firing_ttl_s=60)[0]["endsAt"] == "2026-01-01T00:02:00Z"
    assert alertmanager_alerts(alert("resolved"), two_hours_later)[0]["endsAt"] == "2026-01-01T00:01:00Z"


def test_an_escalation_also_ends_the_alert_of_the_kind_it_replaces() -> None:
    # Labels are an alert's identity to Alertmanager: the negativity spike's alert stayed active beside the
    # crisis it became, and for up to the firing TTL after the incident resolved.
    escalated = msgspec.structs.replace(alert("escalated"), escalated_from="negativity_spike")
    ended, crisis = alertmanager_alerts(escalated, T0 + 60_000)
    assert crisis["labels"]["alertname"] == "BrandCrisis" and crisis["endsAt"] == "2026-01-01T01:01:00Z"
    assert ended["labels"] == {
        "alertname": "BrandNegativitySpike",
        "brand": "Acme",
        "kind": "negativity_spike",
        "severity": "warning",
        "alert_id": f"Acme:crisis:{T0}",
    }
    assert ended["startsAt"] == crisis["startsAt"]
    assert ended["endsAt"] == "2026-01-01T00:01:00Z"  # the escalating window's end
    assert len(alertmanager_alerts(alert(), T0)) == 1


async def test_a_resolved_alert_ends_at_its_window_end(serve: Any) -> None:
    receiver = Receiver(failures=0)
    webhook = AlertmanagerWebhook(await serve(receiver))
    try:
        await webhook.send([alert("resolved")])
    finally:
        await webhook.close()
    assert receiver.bodies[0][0]["endsAt"] == "2026-01-01T00:01:00Z"


async def test_gives_up_after_the_retries_and_does_not_retry_client_errors(serve: Any) -> None:
    always = Receiver(failures=100)
    webhook = AlertmanagerWebhook(await serve(always), retries=2, backoff_s=0.01)
    with pytest.raises(WebhookError, match="gave up after 3 attempts"):
        await webhook.send([alert()])
    assert len(always.bodies) == 3

    rejecting = Receiver(failures=100, status=400)
    webhook2 = AlertmanagerWebhook(await serve(rejecting), retries=2, backoff_s=0.01)
    with pytest.raises(WebhookError, match="HTTP 400"):
        await webhook2.send([alert()])
    assert len(rejecting.bodies) == 1
    await webhook.close()
    await webhook2.close()


async def test_connection_refused_is_retried() -> None:
    webhook = AlertmanagerWebhook("http://127.0.0.1:9", retries=1, backoff_s=0.01)
    with pytest.raises(WebhookError, match="gave up after 2 attempts"):
        await webhook.send([alert()])
    await webhook.close()


@pytest.mark.parametrize("url", ["ftp://am:9093", "file:///etc/passwd", "am:9093", "http://"])
def test_only_http_urls_are_taken(url: str) -> None:
    with pytest.raises(ValueError, match="must be http"):
        AlertmanagerWebhook(url)


async def test_credentials_in_the_url_authenticate_but_never_show(serve: Any) -> None:
    receiver = Receiver(failures=10, status=401)
    base = (await serve(receiver)).replace("http://", "http://alerts:s3cret@")
    webhook = AlertmanagerWebhook(base, retries=0)
    try:
        with pytest.raises(WebhookError) as refused:
            await webhook.send([alert()])
    finally:
        await webhook.close()
    assert "s3cret" not in str(refused.value) and "alerts@" not in str(refused.value)
    assert receiver.authorizations == ["Basic YWxlcnRzOnMzY3JldA=="]


def test_every_alert_kind_has_an_alertmanager_name_and_severity() -> None:
    assert set(ALERT_NAMES) == set(get_args(AlertKind))
    shift = msgspec.structs.replace(alert(), kind="negativity_shift", severity=severity_of("negativity_shift"))
    (posted,) = alertmanager_alerts(shift, T0 + 60_000)
    assert posted["labels"] | {"alert_id": None} == {
        "alertname": "BrandNegativityShift",
        "brand": "Acme",
        "kind": "negativity_shift",
        "severity": "warning",
        "alert_id": None,
    }
