"""The hand-labelled multilingual post set (models/data/handset/posts.jsonl): see its README.

Evaluation only, never trained on: it covers languages no labelled corpus here does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

HANDSET_FILE = Path(__file__).resolve().parent / "data" / "handset" / "posts.jsonl"


class HandPost(msgspec.Struct, frozen=True):
    id: str
    lang: str
    text: str
    label: Literal["negative", "neutral", "positive"]
    # "plain": plainly positive or plainly negative; "hard": sarcasm, mixed, negation, neutral, slang.
    kind: Literal["plain", "hard"]


def load_handset(path: Path = HANDSET_FILE) -> list[HandPost]:
    decoder = msgspec.json.Decoder(HandPost)
    posts = [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    if len({p.id for p in posts}) != len(posts):
        raise ValueError(f"{path}: duplicate ids")
    for post in posts:
        if post.kind == "plain" and post.label == "neutral":
            raise ValueError(f"{path}: plain post {post.id} must be positive or negative")
    return posts
