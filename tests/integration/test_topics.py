"""Topics the worker creates: changelogs compacted, replication as configured, wrong changelogs refused (issue 13)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.settings import Settings
from stream.worker import TopicConfigError, cleanup_policies, ensure_topics
from tests.integration.harness import Topics


def settings_for(kafka: Any, topics: Topics) -> Settings:
    return Settings(kafka_bootstrap=kafka.bootstrap, **topics.fields())  # type: ignore[arg-type]


async def policies(bootstrap: str, names: list[str]) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await cleanup_policies(admin, names)
    finally:
        await admin.close()


def test_changelogs_are_created_compacted_and_outputs_are_not(kafka: Any) -> None:
    topics = Topics()
    settings = settings_for(kafka, topics)
    changelog = f"{settings.app_id}-brand-monitor-state-changelog"
    asyncio.run(ensure_topics(settings, [changelog]))
    found = asyncio.run(policies(kafka.bootstrap, [changelog, settings.sentiment_topic]))
    assert found == {changelog: "compact", settings.sentiment_topic: "delete"}


def test_an_existing_changelog_that_is_not_compacted_stops_the_worker(kafka: Any) -> None:
    topics = Topics()
    settings = settings_for(kafka, topics)
    changelog = f"{settings.app_id}-brand-monitor-state-changelog"

    async def precreate() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(changelog, num_partitions=4, replication_factor=1)])
        finally:
            await admin.close()

    asyncio.run(precreate())
    with pytest.raises(TopicConfigError, match="not compacted"):
        asyncio.run(ensure_topics(settings, [changelog]))
