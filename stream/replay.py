"""Replay a JSON-lines file of posts onto the input topic at a steady rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaProducer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from stream.emit import now_ms


def read_records(path: Path, retime: bool) -> Iterator[bytes]:
    """Lines as they will be sent. With `retime`, valid posts get created_at = send time (live latency).

    Lines that are not JSON objects are sent untouched: replaying malformed input is a feature.
    """
    with path.open("rb") as handle:
        for line in handle:
            line = line.rstrip(b"\n")
            if not line:
                continue
            if retime:
                try:
                    record = msgspec.json.decode(line)
                except msgspec.DecodeError:
                    record = None
                if isinstance(record, dict) and "created_at" in record:
                    record["created_at"] = now_ms()
                    line = msgspec.json.encode(record)
            yield line


async def replay(
    path: Path,
    topic: str,
    bootstrap: str,
    rate: float,
    retime: bool = True,
    limit: int | None = None,
    show_progress: bool = True,
    client_options: dict[str, object] | None = None,
) -> int:
    """Send posts at `rate` per second (0: as fast as possible); returns how many were acknowledged."""
    total = sum(1 for _ in read_records(path, retime=False))
    if limit is not None:
        total = min(total, limit)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5, **(client_options or {})
    )
    await producer.start()
    deliveries: list[asyncio.Future[object]] = []
    columns = (
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    try:
        with Progress(*columns, disable=not show_progress, transient=False) as progress:
            task = progress.add_task("replay", total=total, rate="")
            for sent, record in enumerate(read_records(path, retime), start=1):
                if limit is not None and sent > limit:
                    break
                if rate > 0:
                    # Pace against the schedule, not the previous send, so the mean rate holds.
                    delay = started + sent / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                deliveries.append(await producer.send(topic, value=record))
                if sent % 100 == 0 or sent == total:
                    elapsed = max(time.monotonic() - started, 1e-9)
                    progress.update(task, completed=sent, rate=f"{sent / elapsed:,.0f} posts/s")
            await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return len(deliveries)
