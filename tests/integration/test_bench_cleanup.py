"""A bench run deletes the topics it made (its own and Faust's internal ones), and no others."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient

from stream.settings import Settings
from stream.tools.bench import delete_run_topics
from stream.tools.harness import Topics
from stream.tools.kafka_local import LocalKafka
from stream.worker import ensure_topics


def _changelog(topics: Topics) -> str:
    """A Faust table changelog of the run's app, as the brand monitor makes one."""
    return f"{topics.fields()['app_id']}-brand-monitor-state-changelog"


def _made_by(topics: Topics) -> set[str]:
    names = {value for key, value in topics.fields().items() if key.endswith("_topic")}
    return names | {_changelog(topics)}


async def _listed_once(admin: AIOKafkaAdminClient, settled: Callable[[set[str]], bool]) -> set[str]:
    """Topic metadata follows creates and deletes within seconds: poll until it shows what we wait for."""
    for _ in range(50):
        listed = set(await admin.list_topics())
        if settled(listed):
            break
        await asyncio.sleep(0.2)
    return listed


async def test_delete_run_topics_removes_only_that_run(kafka: LocalKafka, kafka_admin: AIOKafkaAdminClient) -> None:
    settings = Settings(kafka_bootstrap=kafka.bootstrap)
    run, neighbour = Topics(), Topics()
    for topics in (run, neighbour):
        await ensure_topics(settings.model_copy(update=topics.fields()), [_changelog(topics)])
    everything = _made_by(run) | _made_by(neighbour)
    assert everything <= await _listed_once(kafka_admin, lambda listed: everything <= listed)

    await delete_run_topics(settings, run.prefix)

    remaining = await _listed_once(kafka_admin, lambda listed: not _made_by(run) & listed)
    assert not _made_by(run) & remaining
    assert _made_by(neighbour) <= remaining
