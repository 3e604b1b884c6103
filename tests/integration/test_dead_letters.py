"""Dead letters always fit the DLQ (issue 13, finding 5).

A record larger than the worker's producer may send (its max_request_size, 1 MB) reaches the input topic
when the topic allows it; dead-lettering it whole failed every time and stopped the worker, so the
partition never moved. The DLQ now keeps a capped prefix, with the original's length and sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.sample_posts import LabelledRecord, labelled_stream, load_tweet_texts
from stream.schema import RejectReason
from tests.integration.harness import Topics, WorkerProcess, produce, read_outputs

HUGE = 1_500_000
CAP = 1_000_000


async def make_input_topic_that_takes(bootstrap: str, topic: str, max_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topic, num_partitions=4, replication_factor=1, topic_configs={"max.message.bytes": str(max_bytes)}
                )
            ]
        )
    finally:
        await admin.close()


def test_a_record_too_large_to_resend_is_dead_lettered_as_a_capped_prefix(kafka: Any, tmp_path: Path) -> None:
    topics = Topics()
    asyncio.run(make_input_topic_that_takes(kafka.bootstrap, topics.posts, 2_000_000))
    huge = LabelledRecord(b'{"id":"huge-1","text":"' + b"a" * HUGE + b'"}', "huge-1", RejectReason.RECORD_TOO_LARGE)
    valid = labelled_stream(load_tweet_texts(), 50, malformed_share=0.0, seed=21)
    worker = WorkerProcess(kafka.bootstrap, topics, tmp_path, "worker").start()
    try:
        worker.wait_ready()
        asyncio.run(produce(kafka.bootstrap, topics.posts, [*valid[:25], huge, *valid[25:]]))
        outputs = asyncio.run(read_outputs(kafka.bootstrap, topics, len(valid), 1, timeout=120))
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert len(outputs.sentiment_posts()) == len(valid)
    [(reason, value, headers)] = outputs.dead_letters
    assert reason == RejectReason.RECORD_TOO_LARGE.value
    assert value == huge.raw[:CAP]
    assert int(headers["socialpulse.original.length"]) == len(huge.raw)
    assert headers["socialpulse.original.sha256"].decode() == hashlib.sha256(huge.raw).hexdigest()
    assert headers["socialpulse.truncated"] == b"true"
