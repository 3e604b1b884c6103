"""Ingest stage: the Faust agent on the input topic, with manual acks.

Faust's automatic acking (and `take`'s ack-the-buffer-on-cancel) would mark a record done before its
outputs exist, losing it on a rebalance or crash. The stream is `noack()`; the pipeline calls the ack
only after every output produced from the record is acknowledged by Kafka.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import faust

from stream.pipeline import Pipeline
from stream.settings import Settings
from stream.validate import SourceRef


def register_ingest(app: faust.App, settings: Settings, pipeline_ready: Callable[[], Awaitable[Pipeline]]) -> Any:
    topic = app.topic(
        settings.input_topic,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )

    async def ingest(stream: faust.StreamT[bytes]) -> None:
        pipeline = await pipeline_ready()
        # noack() lives on the Stream implementation, not on the StreamT interface.
        manual = cast(faust.Stream[bytes], stream).noack()
        async for event in manual.events():
            message = event.message
            source = SourceRef(message.topic, message.partition, message.offset)
            await pipeline.submit(message.value, source, ack=partial(manual.ack, event))

    return app.agent(topic, name="socialpulse.ingest")(ingest)
