"""Hostile input checked from outside, as a user's producer would see it (issue 13).

kcat, an independent Kafka client, writes valid posts mixed with hostile records to a running worker and
reads every output topic back; nothing of ours produces or counts. Every input offset must come out once
as events (by post id) or as a dead letter (keyed by its source offset), and the group's committed
offsets must reach the end of the input topic.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from stream.tools.sample_posts import load_tweet_texts, make_post
from tests.integration.harness import Topics, WorkerProcess, wait_for_commits

VALID = 300
SERVED = "nul-in-text"  # the one hostile record that is a valid post


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_raw_field(post: dict[str, Any], field: str, raw_json: str) -> bytes:
    """The post as JSON with `field` set to `raw_json` verbatim (nesting json.dumps would refuse to write)."""
    rest = json.dumps({k: v for k, v in post.items() if k != field})
    return f'{rest[:-1]}, "{field}": {raw_json}}}'.encode()


def hostile_records(base: dict[str, Any]) -> dict[str, bytes]:
    """name -> record bytes: each a way a producer can break a consumer that trusts it."""
    rng = random.Random(31)

    def variant(name: str, **changes: Any) -> bytes:
        return json.dumps({**base, "id": name, **changes}).encode()

    return {
        "random-bytes": bytes(rng.randrange(256) for _ in range(400)),
        "deep-unknown-field": with_raw_field({**base, "id": "deep-unknown-field"}, "extra", nested(5_000)),
        "deep-text": with_raw_field({**base, "id": "deep-text"}, "text", nested(100_000)),
        "deep-author": with_raw_field({**base, "id": "deep-author"}, "author", '{"id": ' + nested(3_000) + "}"),
        "deep-brand": with_raw_field({**base, "id": "deep-brand"}, "brand", nested(2_000)),
        # json.dumps writes a lone surrogate as the escape \ud800, which JSON allows and UTF-8 cannot hold.
        "lone-surrogate": variant("lone-surrogate", text="broken \ud800 text"),
        # Legal JSON and legal text: served, not rejected (and not a crash further down).
        "nul-in-text": variant("nul-in-text", text="a NUL \u0000 inside a post about the phone"),
        "huge-followers": variant("huge-followers", author={"id": "a", "followers": 10**30}),
        "float-followers": variant("float-followers", author={"id": "a", "followers": 1.5}),
        "float-created-at": variant("float-created-at", created_at=1767225600000.5),
        "huge-created-at": variant("huge-created-at", created_at=10**40),
        "bom": b"\xef\xbb\xbf" + variant("bom"),
        "giant-id": variant("g" * 10_000),
        "many-hints": variant("many-hints", brand=[f"b{n}" for n in range(5_000)]),
        "long-hint": variant("long-hint", brand="x" * 5_000),
        "json-null": b"null",
        "array": b"[1, 2, 3]",
    }


def kcat(*args: str, stdin: bytes | None = None, timeout: float = 60) -> bytes:
    result = subprocess.run(["kcat", *args], input=stdin, capture_output=True, timeout=timeout, check=True)
    return result.stdout


def kcat_lines(bootstrap: str, topic: str, line_format: str) -> list[str]:
    """Every record of the topic read to its end, one line each in kcat's `-f` format."""
    out = kcat("-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", line_format)
    return [line for line in out.decode(errors="replace").splitlines() if line.strip()]


def posts_out(bootstrap: str, topic: str) -> set[str]:
    # Events are JSON on one line each (JSON escapes newlines).
    return {json.loads(line)["post_id"] for line in kcat_lines(bootstrap, topic, "%s\n")}


def dead_letters(bootstrap: str, topic: str) -> dict[str, str]:
    """Source coordinates (the DLQ key) -> reason header."""
    letters = {}
    for line in kcat_lines(bootstrap, topic, "%k %h\n"):
        key, _, headers = line.partition(" ")
        letters[key] = headers.split("socialpulse.reason=", 1)[1].split(",", 1)[0]
    return letters


def test_hostile_records_from_an_outside_producer_are_all_accounted_for(kafka: Any, tmp_path: Path) -> None:
    topics = Topics()
    rng = random.Random(30)
    texts = load_tweet_texts()
    valid = [make_post(rng, f"v{n}", rng.choice(texts), 1767225600000 + n) for n in range(VALID)]
    hostile = hostile_records(valid[0])
    files = []
    for n, post in enumerate(valid):
        path = tmp_path / f"valid-{n:04d}"
        path.write_bytes(json.dumps(post).encode())
        files.append(path)
    for name, raw in hostile.items():
        path = tmp_path / f"hostile-{name}"
        path.write_bytes(raw)
        files.append(path)
    rng.shuffle(files)

    worker = WorkerProcess(kafka.bootstrap, topics, tmp_path, "worker").start()
    try:
        worker.wait_ready()
        # One file, one record. Then a tombstone: key "tombstone", an empty value sent as NULL (-Z).
        kcat("-P", "-b", kafka.bootstrap, "-t", topics.posts, *map(str, files))
        kcat("-P", "-b", kafka.bootstrap, "-t", topics.posts, "-Z", "-K", ":", stdin=b"tombstone:\n")
        produced = len(files) + 1
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            events = posts_out(kafka.bootstrap, topics.sentiment)
            letters = dead_letters(kafka.bootstrap, topics.dlq)
            if len(events) + len(letters) >= produced:
                break
            time.sleep(1)
        inputs = kcat_lines(kafka.bootstrap, topics.posts, "%t:%p:%o %S\n")
        ends, committed = asyncio.run(wait_for_commits(kafka.bootstrap, topics.fields()["app_id"], topics.posts, 30))
    finally:
        assert worker.stop() == 0, worker.log_tail()

    sizes = {len(raw): name for name, raw in hostile.items()} | {-1: "tombstone"}
    sizes_by_coordinates = dict(line.split(" ") for line in inputs)
    by_name = {sizes.get(int(sizes_by_coordinates[c]), c): reason for c, reason in letters.items()}
    print(f"kcat: {produced} records in, {len(events)} posts out, {len(letters)} dead letters: {by_name}")
    valid_sizes = {len(json.dumps(post).encode()) for post in valid}
    unaccounted = [
        sizes.get(int(size), f"a {size}-byte record")
        for coordinates, size in (line.split(" ") for line in inputs)
        if coordinates not in letters and int(size) not in valid_sizes and sizes.get(int(size)) not in events
    ]
    assert len(events) + len(letters) == produced, (unaccounted, Counter(letters.values()), worker.log_tail())
    served = {post["id"] for post in valid} | {SERVED}
    assert events == served, "a valid post is missing, or a hostile one was served"
    assert set(by_name) == set(hostile) - {SERVED} | {"tombstone"}, by_name
    assert sum(ends.values()) == produced
    assert all(committed.get(p, 0) >= end for p, end in ends.items()), (ends, committed)
