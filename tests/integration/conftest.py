"""Integration fixtures: one real Kafka broker per test session, plus topic and client factories.

The broker is separate from the demo one (own state dir under .cache/kafka-test-<port>, own ports), starts
from an empty data dir each session and is stopped at the end. Override the port with
SOCIALPULSE_TEST_KAFKA_PORT (the KRaft controller takes the next one); the state dir follows the port, so
sessions on different ports never reset each other's broker.

A test module that needs a broker configured otherwise (extra server properties, a SASL_SSL listener)
starts its own with `harness.fresh_broker(offset, ...)`, on ports above the session broker's. Offsets taken:
0-1 the session broker, 2-4 test_sasl_ssl.py, 5-6 test_pipeline.py's broker without topic auto-creation.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.tools.kafka_local import LocalKafka
from tests.integration.harness import fresh_broker
from tests.integration.worker_fixtures import running_worker  # noqa: F401  pytest_plugins only works in a root conftest

_HERE = Path(__file__).resolve().parent

TopicFactory = Callable[..., Awaitable[str]]
ProducerFactory = Callable[..., Awaitable[AIOKafkaProducer]]
ConsumerFactory = Callable[..., Awaitable[AIOKafkaConsumer]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    with fresh_broker() as broker:
        yield broker


@pytest.fixture
async def kafka_admin(kafka: LocalKafka) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    yield admin
    await admin.close()


@pytest.fixture
async def topic_factory(kafka_admin: AIOKafkaAdminClient) -> TopicFactory:
    """`await topic_factory(partitions=4, prefix="t", **topic_configs)` creates a fresh topic and returns its name."""

    async def create(partitions: int = 4, prefix: str = "t", **configs: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        response = await kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=configs)]
        )
        errors = [(topic, code, message) for topic, code, message in response.topic_errors if code != 0]
        if errors:
            raise RuntimeError(f"create_topics failed: {errors}")
        await _wait_for_leaders(kafka_admin, name, partitions)
        return name

    return create


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topic: str, partitions: int, timeout_s: float = 15.0) -> None:
    # Creation returns once the controller has the topic; producing before every partition has a leader
    # would only add retry noise to the tests.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        (description,) = await admin.describe_topics([topic])
        led = [p for p in description["partitions"] if p["error_code"] == 0 and p["leader"] >= 0]
        if description["error_code"] == 0 and len(led) == partitions:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"topic {topic} has no leader for every partition after {timeout_s}s: {description}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def producer_factory(kafka: LocalKafka) -> AsyncIterator[ProducerFactory]:
    """`await producer_factory(**aiokafka_options)`: a started producer, stopped after the test."""
    started: list[AIOKafkaProducer] = []

    async def create(**options: Any) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, **options)
        await producer.start()
        started.append(producer)
        return producer

    yield create
    for producer in started:
        await producer.stop()


@pytest.fixture
async def consumer_factory(kafka: LocalKafka) -> AsyncIterator[ConsumerFactory]:
    """`await consumer_factory(*topics, **aiokafka_options)`: a started consumer reading from the earliest offset."""
    started: list[AIOKafkaConsumer] = []

    async def create(*topics: str, **options: Any) -> AIOKafkaConsumer:
        options.setdefault("auto_offset_reset", "earliest")
        consumer = AIOKafkaConsumer(*topics, bootstrap_servers=kafka.bootstrap, **options)
        await consumer.start()
        started.append(consumer)
        return consumer

    yield create
    for consumer in started:
        await consumer.stop()
