"""Alert quality on synthetic streams of real rated tweets: false alerts, burst and drift detection delay.

    .venv/bin/python bench/brand_alerts.py [--seeds 20] [--ramp-seeds 5] [--diurnal-seeds 2] [--json]

Steady: an hour of 4 brands at 20 posts/min each, per seed; every alert is a false one.
Diurnal: a day of 4 brands averaging 20 posts/min, 7x between the 03:00 trough and the 15:00 peak; every
alert is a false one.
Burst: the steady hour plus 60 negative posts/min for one brand during 3 minutes, at a seed-dependent
offset; measures the delay from burst start to the end of the window the crisis fires for (when it is
emitted, plus the allowed lateness) and checks it is the only incident.
Ramps: one brand at 40 posts/min with a 20 % negative share, 6 hours steady, then a linear ramp (share or
volume) that holds for an hour after it ends; measures the delay from ramp start to the end of the window
the first shift alert fires for, and counts the alerts of the 6 steady hours as false.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.brands.backtest import BacktestResult, run_backtest
from stream.brands.query import BrandCatalog
from stream.brands.synthetic import (
    Burst,
    Ramp,
    RatedTweet,
    StreamSpec,
    demo_brands_yaml,
    load_rated_tweets,
    synthetic_posts,
)
from stream.settings import Settings
from stream.worker import build_validator

MINUTE = 60_000
STEADY_MINUTES = 360
RAMPS = {
    "negativity 20%->75% over 1 h": Ramp("Acme", STEADY_MINUTES, 60, negativity=0.75),
    "negativity 20%->75% over 2 h": Ramp("Acme", STEADY_MINUTES, 120, negativity=0.75),
    "negativity 20%->75% over 4 h": Ramp("Acme", STEADY_MINUTES, 240, negativity=0.75),
    "negativity 20%->45% over 2 h": Ramp("Acme", STEADY_MINUTES, 120, negativity=0.45),
    "volume x2 over 2 h": Ramp("Acme", STEADY_MINUTES, 120, volume_factor=2.0),
}
SHIFTS = ("negativity_shift",)


def backtest(spec: StreamSpec, tweets: list[RatedTweet]) -> BacktestResult:
    records = [msgspec.json.encode(p) for p in synthetic_posts(spec, tweets)]
    catalog = BrandCatalog.from_yaml_text(demo_brands_yaml(spec.brands))
    return run_backtest(records, catalog, build_validator(Settings()))


def spread(values: list[float]) -> dict[str, float | None]:
    return {
        "min": min(values, default=None),
        "median": statistics.median(values) if values else None,
        "max": max(values, default=None),
    }


def openings(result: BacktestResult, before_ms: int | None = None) -> int:
    return sum(1 for a in result.alerts if a.status == "firing" and (before_ms is None or a.window.end <= before_ms))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--ramp-seeds", type=int, default=5)
    parser.add_argument("--diurnal-seeds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tweets = load_rated_tweets()
    false_alerts, brand_windows, delays, clean_bursts = 0, 0, [], 0
    for seed in range(args.seeds):
        result = backtest(StreamSpec(minutes=60, seed=1000 + seed), tweets)
        false_alerts += openings(result)
        brand_windows += result.windows
        start = 40 + (seed % 4) * 0.25
        spec = StreamSpec(minutes=60, seed=2000 + seed, bursts=[Burst("Acme", start)])
        result = backtest(spec, tweets)
        firing = [a for a in result.alerts if a.status != "resolved"]
        resolved = [a for a in result.alerts if a.status == "resolved"]
        if len(firing) == 1 and firing[0].kind == "crisis" and firing[0].brand == "Acme" and len(resolved) == 1:
            clean_bursts += 1
        crisis = [a for a in firing if a.kind == "crisis" and a.brand == "Acme"]
        if crisis:
            delays.append((crisis[0].window.end - (spec.start_ms + int(start * MINUTE))) / 1000)

    diurnal_alerts = 0
    for seed in range(args.diurnal_seeds):
        diurnal_alerts += openings(backtest(StreamSpec(minutes=1440, seed=3000 + seed, diurnal=7.0), tweets))

    ramps: dict[str, object] = {}
    ramp_false_alerts = 0
    for name, ramp in RAMPS.items():
        shift_delays, first_delays, levels, missed = [], [], [], 0
        for seed in range(args.ramp_seeds):
            spec = StreamSpec(
                minutes=STEADY_MINUTES + ramp.minutes + 60,
                per_minute=40,
                brands=("Acme",),
                negativity=0.2,
                seed=4000 + seed,
                ramps=[ramp],
            )
            ramp_ms = spec.start_ms + int(ramp.start_minute * MINUTE)
            result = backtest(spec, tweets)
            ramp_false_alerts += openings(result, before_ms=ramp_ms)
            during = [a for a in result.alerts if a.status == "firing" and a.window.end > ramp_ms]
            if during:
                first_delays.append((during[0].window.end - ramp_ms) / MINUTE)
            shift = [a for a in during if a.kind in SHIFTS]
            if shift:
                shift_delays.append((shift[0].window.end - ramp_ms) / MINUTE)
                levels.append(shift[0].observed)
            else:
                missed += 1
        ramps[name] = {
            "shift_detected": args.ramp_seeds - missed,
            "shift_delay_min": spread(shift_delays),
            "first_alert_delay_min": spread(first_delays),
            "level_at_detection": spread(levels),
        }

    steady_brand_days = args.seeds * 4 / 24 + args.ramp_seeds * len(RAMPS) * STEADY_MINUTES / 1440
    report = {
        "seeds": args.seeds,
        "steady_brand_hours": args.seeds * 4,
        "false_alerts": false_alerts,
        "false_alerts_per_brand_window": false_alerts / max(1, brand_windows),
        "ramp_steady_brand_hours": args.ramp_seeds * len(RAMPS) * STEADY_MINUTES / 60,
        "ramp_steady_false_alerts": ramp_false_alerts,
        "steady_false_alerts_per_brand_day": (false_alerts + ramp_false_alerts) / steady_brand_days,
        "diurnal_brand_days": args.diurnal_seeds * 4,
        "diurnal_false_alerts": diurnal_alerts,
        "diurnal_false_alerts_per_brand_day": diurnal_alerts / max(1, args.diurnal_seeds * 4),
        "bursts_detected": len(delays),
        "bursts_exactly_one_crisis_and_resolution": clean_bursts,
        "detection_delay_s": spread(delays),
        "ramps": ramps,
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
