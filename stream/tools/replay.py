"""Replay a JSON-lines file of posts onto the input topic at a steady rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaProducer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from stream.emit import now_ms
from stream.kafka_auth import start_client
from stream.validate import parse_created_at

HOLD_POLL_S = 0.05


def read_records(path: Path, retime: bool) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) as they will be sent: keyed by post id, so a duplicate lands on its original's partition
    (and worker). With `retime`, posts get created_at = send time, so latency reads as live.

    Lines that are not JSON objects are sent untouched and unkeyed: replaying malformed input is a feature.
    """
    with path.open("rb") as handle:
        for line in handle:
            value = line.rstrip(b"\n")
            if not value:
                continue
            try:
                record = msgspec.json.decode(value)
            except (msgspec.DecodeError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict):
                yield None, value
                continue
            # A malformed timestamp stays malformed: replaying bad input must keep it bad.
            if retime and parse_created_at(record.get("created_at", "")) is not None:
                record["created_at"] = now_ms()
                value = msgspec.json.encode(record)
            post_id = record.get("id")
            yield (str(post_id).encode() if post_id is not None else None), value


async def replay(
    path: Path,
    topic: str,
    bootstrap: str,
    rate: float,
    retime: bool = True,
    limit: int | None = None,
    show_progress: bool = True,
    client_options: dict[str, object] | None = None,
    on_sent: Callable[[int], None] | None = None,
    hold: Callable[[int], bool] | None = None,
) -> int:
    """Send posts at `rate` per second (0: as fast as possible); returns how many were acknowledged.

    `hold(sent)`, when given, is asked before each send; while it says yes the replay waits, then keeps its
    rate from there instead of bursting to catch up (the demo holds back while the worker is behind).
    """
    total = sum(1 for _ in read_records(path, retime=False))
    if limit is not None:
        total = min(total, limit)
    options = client_options or {}
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5, **options
    )
    deliveries: list[asyncio.Future[object]] = []
    columns = (
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    try:
        # Inside the try: a producer that could not log in is closed too.
        await start_client(producer, bootstrap, options)
        started = time.monotonic()
        with Progress(*columns, disable=not show_progress, transient=False) as progress:
            task = progress.add_task("replay", total=total, rate="")
            records = read_records(path, retime)
            for sent in range(1, total + 1):
                if hold is not None and hold(sent - 1):
                    while hold(sent - 1):
                        await asyncio.sleep(HOLD_POLL_S)
                    if rate > 0:
                        started = time.monotonic() - (sent - 1) / rate
                if rate > 0:
                    # Pace against the schedule, not the previous send, so the mean rate holds.
                    delay = started + (sent - 1) / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                # Read (and retime) after the pause, so created_at is the real send time.
                key, value = next(records)
                deliveries.append(await producer.send(topic, key=key, value=value))
                if sent % 100 == 0 or sent == total:
                    elapsed = max(time.monotonic() - started, 1e-9)
                    progress.update(task, completed=sent, rate=f"{sent / elapsed:,.0f} posts/s")
                    if on_sent is not None:
                        on_sent(sent)
            await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return len(deliveries)
