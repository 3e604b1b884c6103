"""Alert delivery to an Alertmanager-compatible receiver: POST {base}/api/v2/alerts, retried with backoff."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
from yarl import URL

from stream.brands.model import Alert, AlertKind, Severity, severity_of
from stream.emit import now_ms

log = logging.getLogger(__name__)

ALERT_NAMES: dict[AlertKind, str] = {
    "crisis": "BrandCrisis",
    "volume_spike": "BrandVolumeSpike",
    "negativity_spike": "BrandNegativitySpike",
    "negativity_shift": "BrandNegativityShift",
}


class WebhookError(RuntimeError):
    """The receiver did not accept the alerts after every retry."""


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def alertmanager_alerts(alert: Alert, posted_ms: int, firing_ttl_s: float = 3600.0) -> list[dict[str, Any]]:
    """The alert in the Alertmanager v2 API shape (postableAlert), posted at wall time `posted_ms`; for an
    escalation, the end of the alert it replaces as well."""
    # Alertmanager ends an alert whose endsAt has passed by its own clock: a firing alert is held for
    # firing_ttl_s from when it is posted unless its resolved event (endsAt = the resolving window's end)
    # arrives first. Counted from the window's end instead, an alert from a worker catching up on a backlog
    # more than firing_ttl_s old arrived already resolved and was never notified.
    ttl_ms = int(firing_ttl_s * 1000)
    ends = alert.window.end if alert.status == "resolved" else max(alert.window.end, posted_ms) + ttl_ms
    posted = [_postable(alert, alert.kind, alert.severity, ends, alert.status)]
    if alert.escalated_from is not None:
        # Labels are an alert's identity to Alertmanager: the incident's first kind is another alert, which
        # would otherwise stay active beside the crisis until its own endsAt. Ended first, so no reader of
        # Alertmanager sees the crisis beside it.
        kind = alert.escalated_from
        posted.insert(0, _postable(alert, kind, severity_of(kind), alert.window.end, f"escalated to {alert.kind}"))
    return posted


def _postable(alert: Alert, kind: AlertKind, severity: Severity, ends_ms: int, status: str) -> dict[str, Any]:
    return {
        "labels": {
            "alertname": ALERT_NAMES[kind],
            "brand": alert.brand,
            "kind": kind,
            "severity": severity,
            "alert_id": alert.alert_id,
        },
        "annotations": {
            "summary": f"{alert.brand}: {kind.replace('_', ' ')} ({status})",
            "description": (
                f"{alert.metric} {alert.observed:g} vs baseline {alert.baseline_mean:g} "
                f"(sd {alert.baseline_std:g}, z {alert.z:g}) in the window from {_rfc3339(alert.window.start)}"
            ),
            "top_terms": ", ".join(t.term for t in alert.top_terms),
            "example_posts": ", ".join(e.post_id for e in alert.examples),
            # Only with a story: Alertmanager keeps what it is given, and an alert without stories is common.
            **({"top_story": alert.stories[0].describe()} if alert.stories else {}),
        },
        "startsAt": _rfc3339(alert.started_at),
        "endsAt": _rfc3339(ends_ms),
    }


def _redacted(url: URL) -> str:
    return str(url.with_user(None)) if url.user or url.password else str(url)


class AlertmanagerWebhook:
    def __init__(
        self,
        base_url: str,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 10.0,
        firing_ttl_s: float = 3600.0,
    ) -> None:
        base = URL(base_url.rstrip("/"))
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"alert webhook URL must be http(s)://host[:port][/path], got {_redacted(base)}")
        # Credentials in the URL authenticate the POST (basic auth) but never appear in logs or errors.
        self.url = str(base / "api/v2/alerts")
        self.shown_url = _redacted(base / "api/v2/alerts")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.firing_ttl_s = firing_ttl_s
        self._session: aiohttp.ClientSession | None = None

    async def send(self, alerts: list[Alert]) -> int:
        """POST the alerts; returns the attempts it took. Retries connection errors, 5xx and 429."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        posted = now_ms()
        body = [postable for alert in alerts for postable in alertmanager_alerts(alert, posted, self.firing_ttl_s)]
        delay = self.backoff_s
        for attempt in range(1, self.retries + 2):
            try:
                async with self._session.post(self.url, json=body) as response:
                    if response.status < 300:
                        return attempt
                    problem = f"HTTP {response.status}: {(await response.text())[:200]}"
                    if response.status < 500 and response.status != 429:
                        raise WebhookError(f"{self.shown_url} rejected the alerts: {problem}")
            except (aiohttp.ClientError, TimeoutError) as error:
                problem = f"{type(error).__name__}: {error}".replace(self.url, self.shown_url)
            if attempt > self.retries:
                break
            log.warning("alert webhook attempt %d failed (%s); retrying in %.1fs", attempt, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)
        raise WebhookError(f"{self.shown_url}: gave up after {self.retries + 1} attempts: {problem}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
