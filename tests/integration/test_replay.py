"""`replay`'s hold: the demo's way of not running ahead of a worker that drains slower than the replay rate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from stream.tools.replay import replay

POSTS = 40
RATE = 50.0


def write_posts(path: Path) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"id": f"p{i}", "text": f"post {i}"}) + b"\n" for i in range(POSTS)))
    return path


async def test_replay_waits_while_held_and_then_keeps_its_rate(
    kafka: Any, topic_factory: Any, consumer_factory: Any, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=1, prefix="replay")
    asked: list[int] = []
    released_at = time.monotonic() + 1.0

    def hold(sent: int) -> bool:
        asked.append(sent)
        # Held once 10 posts are out, until a second has passed: a worker catching up.
        return sent >= 10 and time.monotonic() < released_at

    started = time.monotonic()
    sent = await replay(
        write_posts(tmp_path / "posts.jsonl"), topic, kafka.bootstrap, RATE, False, hold=hold, show_progress=False
    )
    elapsed = time.monotonic() - started

    assert sent == POSTS
    assert set(range(POSTS)) <= set(asked)
    # The 30 posts after the release keep the rate (29 gaps of 1/RATE). Had the replay kept its first
    # schedule, they would all have been due by then and gone out at once.
    assert elapsed >= 1.0 + 29 / RATE
    consumer = await consumer_factory(topic)
    received: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(received) < POSTS and time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            received += [record.key for record in records]
    assert received == [f"p{i}".encode() for i in range(POSTS)]
