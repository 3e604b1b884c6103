"""Sustained negativity shifts: a recent level held against hours of history, with hysteresis.

The burst detector (BrandMonitor._detect) compares each window with an EWMA of the last ~10 windows, so a
share that climbs over hours drags its baseline along and never looks anomalous. This one keeps two
post-weighted shares per brand (model.ShareLevel): a recent level (time constant `shift_recent_s`, 10
minutes) and a long one (`shift_baseline_s`, 3 hours). A window is over the threshold when the recent
level exceeds the long one by `shift_z` standard errors and by `shift_min_rise`; `shift_confirm_windows`
such windows in a row open a `negativity_shift` incident. It resolves only after `shift_resolve_windows`
windows in a row below the lower bar (`shift_resolve_z` or `shift_resolve_rise`), then a cooldown: a level
hovering at the opening threshold gives one incident, not a train of them. A lasting shift enters the long
level at its time constant and eventually resolves as the new normal.

The standard error is the binomial error of both levels at their effective sample sizes, times the
windows' overdispersion (the EWMA of squared Pearson residuals against the recent level, at least 1).
Windows the burst detector found anomalous stay out of both levels, so a burst is one crisis, not also a
shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from stream.brands.model import Band, Drift, Incident, Signal

if TYPE_CHECKING:
    from stream.brands.monitor import MonitorConfig

# A share this close to 0 or 1 still has this much binomial variance per post (as the burst detector's floor).
MIN_BINOMIAL_VAR = 0.01


@dataclass(frozen=True, slots=True)
class ShiftWindow:
    """One closed window's outcome: the signal (None while warming up), the band it was held against, and
    the incident event it caused."""

    signal: Signal | None
    level: float | None
    band: Band | None
    event: Literal["firing", "resolved"] | None = None
    incident: Incident | None = None


class ShiftDetector:
    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.window_ms = config.window_s * 1000
        self.recent_alpha = min(1.0, config.window_s / config.shift_recent_s)
        self.usual_alpha = min(1.0, config.window_s / config.shift_baseline_s)
        self.warmup_windows = math.ceil(config.shift_warmup_s / config.window_s)

    def close_window(
        self, drift: Drift, brand: str, start: int, negative: int, posts: int, *, excluded: bool
    ) -> ShiftWindow:
        """Judge the window [start, start + window) of `brand`; `excluded`: the burst detector found it anomalous."""
        if not excluded:
            self._update_recent(drift, negative, posts)
        signal, level, band = self._signal(drift)
        if not excluded:
            drift.usual.update(negative, posts, self.usual_alpha)
        event, incident = self._lifecycle(drift, brand, start, signal)
        return ShiftWindow(signal, level, band, event, incident)

    def _update_recent(self, drift: Drift, negative: int, posts: int) -> None:
        share, recent = drift.recent.share(), drift.recent
        # Only against a settled recent level: its own early noise is not the windows' dispersion.
        if share is not None and posts and recent.posts**2 / recent.square >= self.config.shift_min_posts:
            residual = (negative - posts * share) ** 2 / (posts * max(share * (1 - share), MIN_BINOMIAL_VAR))
            drift.dispersion += self.usual_alpha * (residual - drift.dispersion)
        recent.update(negative, posts, self.recent_alpha)

    def _signal(self, drift: Drift) -> tuple[Signal | None, float | None, Band | None]:
        c, recent, usual = self.config, drift.recent, drift.usual
        level, mean = recent.share(), usual.share()
        if level is None or mean is None or usual.windows < self.warmup_windows:
            return None, level, None
        if recent.posts**2 / recent.square < c.shift_min_posts:
            return None, level, None
        binomial = max(mean * (1 - mean), MIN_BINOMIAL_VAR)
        overdispersion = max(1.0, drift.dispersion)
        std = math.sqrt(overdispersion * binomial * (recent.square / recent.posts**2 + usual.square / usual.posts**2))
        margin = max(c.shift_z * std, c.shift_min_rise)
        band = Band(round(mean, 4), round(max(0.0, mean - margin), 4), round(min(1.0, mean + margin), 4))
        z = round((level - mean) / std, 3)
        return Signal("negativity", round(level, 4), round(mean, 4), round(std, 4), z, "long"), level, band

    def _lifecycle(
        self, drift: Drift, brand: str, start: int, signal: Signal | None
    ) -> tuple[Literal["firing", "resolved"] | None, Incident | None]:
        c = self.config
        rise = signal.observed - signal.baseline_mean if signal is not None else 0.0
        incident = drift.incident
        if incident is None:
            over = signal is not None and signal.z >= c.shift_z and rise >= c.shift_min_rise
            drift.streak = drift.streak + 1 if over else 0
            if drift.streak < c.shift_confirm_windows or start < drift.cooldown_until:
                return None, None
            started = start - (drift.streak - 1) * self.window_ms
            drift.incident = Incident(f"{brand}:negativity_shift:{started}", "negativity_shift", started)
            drift.streak = 0
            return "firing", drift.incident
        quiet = signal is None or signal.z < c.shift_resolve_z or rise < c.shift_resolve_rise
        incident.quiet_windows = incident.quiet_windows + 1 if quiet else 0
        if incident.quiet_windows < c.shift_resolve_windows:
            return None, None
        drift.incident = None
        drift.cooldown_until = start + (1 + c.shift_cooldown_windows) * self.window_ms
        return "resolved", incident
