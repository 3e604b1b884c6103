"""A Faust worker running only the brand monitor agent (no model): `python brand_monitor_worker.py worker`."""

from __future__ import annotations

import asyncio

import faust

from stream.brands.agent import register_brand_agents
from stream.brands.monitor import MonitorConfig
from stream.settings import Settings
from stream.worker import changelog_topics, create_app, ensure_topics

settings = Settings()
app = create_app(settings)
register_brand_agents(app, settings, MonitorConfig(), tick_s=1.0, idle_s=60.0)

if __name__ == "__main__":
    asyncio.run(ensure_topics(settings, changelog_topics(app)))
    faust.Worker(app, loglevel="info").execute_from_commandline()
