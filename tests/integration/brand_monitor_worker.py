"""A Faust worker running only the brand monitor agent (no model): `python brand_monitor_worker.py worker`.
It posts alerts to SOCIALPULSE_BRANDS_WEBHOOK_URL when that is set, and runs the share-of-voice agent for the
competitor sets of SOCIALPULSE_BRANDS_FILE when that is set, as the real worker does.

BRAND_TEST_FAIL_AFTER_OBSERVING=<post id> stands in for a bug in the monitor: observing that post raises
after the monitor has changed its state.
"""

from __future__ import annotations

import asyncio
import os

import faust

from stream.brands.agent import register_brand_agents
from stream.brands.model import Output
from stream.brands.monitor import MonitorConfig
from stream.brands.share import CompetitorSets
from stream.schema import BrandMention
from stream.settings import Settings
from stream.worker import changelog_topics, create_app, ensure_topics

settings = Settings()
app = create_app(settings)
agents = register_brand_agents(
    app,
    settings,
    MonitorConfig(),
    webhook_url=settings.brands_webhook_url,
    tick_s=1.0,
    idle_s=60.0,
    sets=CompetitorSets.from_yaml(settings.brands_file) if settings.brands_file else None,
)

if poison := os.environ.get("BRAND_TEST_FAIL_AFTER_OBSERVING"):
    observe = agents.monitor.observe

    def observe_then_fail(mention: BrandMention, offset: int | None = None) -> list[Output]:
        outputs = observe(mention, offset)
        if mention.post_id == poison:
            raise RuntimeError(f"injected failure after observing {poison}")
        return outputs

    agents.monitor.observe = observe_then_fail  # type: ignore[method-assign]

if __name__ == "__main__":
    asyncio.run(ensure_topics(settings, changelog_topics(app)))
    faust.Worker(app, loglevel="info").execute_from_commandline()
