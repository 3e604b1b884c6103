"""Alert quality on synthetic streams of real rated tweets: false-positive rate and burst detection delay.

    .venv/bin/python bench/brand_alerts.py [--seeds 20] [--json]

Steady: an hour of 4 brands at 20 posts/min each, per seed; every alert is a false positive.
Burst: the same plus 60 negative posts/min for one brand during 3 minutes, at a seed-dependent offset;
measures the delay from burst start to the end of the window the crisis fires for (when it is emitted,
plus the allowed lateness) and checks it is the only incident.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.brands.backtest import run_backtest
from stream.brands.query import BrandCatalog
from stream.brands.synthetic import Burst, StreamSpec, demo_brands_yaml, load_rated_tweets, synthetic_posts
from stream.settings import Settings
from stream.worker import build_validator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tweets = load_rated_tweets()
    catalog = BrandCatalog.from_yaml_text(demo_brands_yaml())
    false_alerts, brand_windows, delays, clean_bursts = 0, 0, [], 0
    for seed in range(args.seeds):
        steady = synthetic_posts(StreamSpec(minutes=60, seed=1000 + seed), tweets)
        result = run_backtest([msgspec.json.encode(p) for p in steady], catalog, build_validator(Settings()))
        false_alerts += sum(1 for a in result.alerts if a.status == "firing")
        brand_windows += result.windows
        start = 40 + (seed % 4) * 0.25
        spec = StreamSpec(minutes=60, seed=2000 + seed, bursts=[Burst("Acme", start)])
        result = run_backtest(
            [msgspec.json.encode(p) for p in synthetic_posts(spec, tweets)], catalog, build_validator(Settings())
        )
        firing = [a for a in result.alerts if a.status != "resolved"]
        resolved = [a for a in result.alerts if a.status == "resolved"]
        if len(firing) == 1 and firing[0].kind == "crisis" and firing[0].brand == "Acme" and len(resolved) == 1:
            clean_bursts += 1
        crisis = [a for a in firing if a.kind == "crisis" and a.brand == "Acme"]
        if crisis:
            delays.append((crisis[0].window.end - (spec.start_ms + int(start * 60_000))) / 1000)
    report = {
        "seeds": args.seeds,
        "steady_brand_hours": args.seeds * 4,
        "false_alerts": false_alerts,
        "false_alerts_per_brand_window": false_alerts / max(1, brand_windows),
        "bursts_detected": len(delays),
        "bursts_exactly_one_crisis_and_resolution": clean_bursts,
        "detection_delay_s": {
            "min": min(delays, default=None),
            "median": statistics.median(delays) if delays else None,
            "max": max(delays, default=None),
        },
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
