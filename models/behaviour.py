"""The hand-written behaviour dataset (models/data/behaviour/*.jsonl): see its README."""

from __future__ import annotations

from pathlib import Path

import msgspec

BEHAVIOUR_LABELS: tuple[str, ...] = ("complaint", "purchase_intent", "question", "praise", "churn_risk", "spam")
BEHAVIOUR_DIR = Path(__file__).resolve().parent / "data" / "behaviour"


class BehaviourPost(msgspec.Struct, frozen=True):
    id: str
    text: str
    labels: list[str]

    def targets(self) -> list[float]:
        return [1.0 if label in self.labels else 0.0 for label in BEHAVIOUR_LABELS]


def load_behaviour(split: str, directory: Path = BEHAVIOUR_DIR) -> list[BehaviourPost]:
    path = directory / f"{split}.jsonl"
    decoder = msgspec.json.Decoder(BehaviourPost)
    posts = [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    for post in posts:
        unknown = set(post.labels) - set(BEHAVIOUR_LABELS)
        if unknown:
            raise ValueError(f"{path}: post {post.id} has unknown labels {sorted(unknown)}")
    return posts
