"""The brand agent's settle order, driven in-process with the Kafka sends held: a record's outputs reach Kafka
before the state that marks it applied, and a commit that begins while its outputs are being sent holds it."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

import msgspec
import pytest
from faust.streams import _current_event
from faust.types import TP

from stream.brands.agent import BrandAgents
from stream.brands.monitor import MonitorConfig
from stream.brands.stories import StoryConfig
from stream.schema import BrandMention
from stream.settings import Settings
from stream.worker import create_app

MENTIONS = "unit.brand_mentions"


class Message:
    def __init__(self, partition: int, offset: int) -> None:
        self.topic = MENTIONS
        self.partition = partition
        self.offset = offset
        self.tp = TP(MENTIONS, partition)
        self.key = b"Acme"


class Event:
    def __init__(self, message: Message, value: bytes) -> None:
        self.message = message
        self.value = value


class Kafka:
    """Stands in for the producer: every send is recorded and resolves only when the test says so."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, asyncio.Future[None]]] = []
        self.acked: list[int] = []
        self.on_first_output: Any = None

    def pending(self, kind: str) -> list[asyncio.Future[None]]:
        return [f for k, f in self.sent if k == kind and not f.done()]

    async def output(self, **_: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append(("output", future))
        if self.on_first_output is not None:
            hook, self.on_first_output = self.on_first_output, None
            await asyncio.sleep(0)  # the producer made the agent wait: the commit timer fires meanwhile
            hook()
        return future

    def changelog(self, *_: Any, **__: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append(("changelog", future))
        return future

    async def ack(self, event: Event) -> None:
        self.acked.append(event.message.offset)


@pytest.fixture
async def wired(tmp_path: Path) -> tuple[BrandAgents, Kafka]:
    settings = Settings(app_id="unit-settle", mentions_topic=MENTIONS, data_dir=tmp_path, kafka_bootstrap="127.0.0.1:9")  # type: ignore[call-arg]
    agents = BrandAgents(create_app(settings), settings, MonitorConfig(), StoryConfig(), None, idle_s=60)
    kafka = Kafka()
    for topic in (agents.stats_topic, agents.alerts_topic, agents.stories_topic, agents.dead_letters):
        topic.send = kafka.output  # type: ignore[method-assign,assignment]
    for table in (agents.brand_table, agents.author_table, agents.story_table, agents.index_table):
        table.send_changelog = kafka.changelog  # type: ignore[method-assign,assignment]
    agents.streams[MENTIONS] = kafka
    return agents, kafka


def spam_mention() -> bytes:
    """A mention the monitor flags, so handling it sends an output (the FlaggedMention)."""
    return msgspec.json.encode(
        BrandMention(
            post_id="p1",
            brand="Acme",
            text="buy followers cheap acme",
            created_at=1_700_000_000_000,
            author_id="a1",
            followers=5,
            platform="x",
            language="en",
            sentiment="neutral",
            sentiment_scores={"negative": 0.1, "neutral": 0.8, "positive": 0.1},
            behaviours=["spam"],
            behaviour_scores={"spam": 0.9},
        )
    )


async def handle(agents: BrandAgents, event: Event) -> None:
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]  # what Faust's stream sets while the agent holds a record
    try:
        await agents.handle(event)
    finally:
        _current_event.reset(token)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        future.set_result(None)


async def test_state_reaches_the_changelog_only_after_the_outputs(wired: tuple[BrandAgents, Kafka]) -> None:
    agents, kafka = wired
    event = Event(Message(0, 7), spam_mention())
    await handle(agents, event)
    agents.flush()
    await settle()
    assert kafka.pending("output"), "the flagged mention sent no output: nothing was tested"
    # Sent together before, a worker killed between the two acks restarted with the record applied (its
    # offset in the state) and its output lost: the replay skips it.
    assert not kafka.pending("changelog")
    resolve(kafka.pending("output"))
    await settle()
    assert kafka.pending("changelog")
    assert kafka.acked == []
    resolve(kafka.pending("changelog"))
    await settle()
    assert kafka.acked == [7]
    assert agents.sequencer.committable(event.message.tp) == 8


async def test_a_commit_that_begins_while_outputs_are_sent_holds_the_record(wired: tuple[BrandAgents, Kafka]) -> None:
    agents, kafka = wired
    event = Event(Message(0, 3), spam_mention())
    kafka.on_first_output = agents.flush  # the commit begins while the agent waits on the producer
    await handle(agents, event)
    await settle()
    # That flush staged the record's state; it was settled by a later flush, with its state already sent.
    assert not kafka.pending("changelog"), "the record's state went out before its outputs were acknowledged"
    resolve(kafka.pending("output"))
    await settle()
    resolve(kafka.pending("changelog"))
    await settle()
    assert kafka.acked == [3]
