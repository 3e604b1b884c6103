"""Story quality on synthetic streams of real posts with injected topics, using the real model's embeddings.

    .venv/bin/python bench/stories.py [--seeds 3] [--json]

Per seed: 40 minutes of two brands at 20 posts/min each (real rated tweets, stream/brands/synthetic.py) plus
three topic bursts for Acme, made from phrase templates and fragments of real negative tweets
(synthetic.TOPICS): `double_charge` and `outage` at 40 posts/min each over the same minutes 20-24 (so they
must come apart while they overlap), `lost_parcel` at 40 posts/min over minutes 30-33. The posts carry no
labels: the default ONNX model (int8 on CPU) gives sentiment and the pooled embedding, as in the worker, and
the backtest runs the monitor with its story tracker over them.

For Acme's posts that reached the tracker (after the frame's warm-up): each topic's dominant story (the one
holding most of its posts), its recall (the topic's posts in it) and purity (its posts from the topic); the
adjusted Rand index of the stories against the injected labels, over the topic posts and over all posts (a
post's cluster is its story if that story was ever born, else "unclustered"; background is one label); born
stories that are mostly background; and the stories the Acme crisis alert names.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.brands.backtest import onnx_classifier, run_backtest
from stream.brands.model import Output
from stream.brands.monitor import MonitorConfig
from stream.brands.query import BrandCatalog
from stream.brands.stories import Story, StoryState, StoryTracker, Vector
from stream.brands.synthetic import Burst, StreamSpec, demo_brands_yaml, load_rated_tweets, synthetic_posts
from stream.schema import BrandMention
from stream.settings import Settings
from stream.worker import build_validator

BRANDS = ("Acme", "Globex")
TOPIC_BURSTS = (
    Burst("Acme", 20.0, minutes=4, per_minute=40, topic="double_charge"),
    Burst("Acme", 20.0, minutes=4, per_minute=40, topic="outage"),
    Burst("Acme", 30.0, minutes=3, per_minute=40, topic="lost_parcel"),
)
LABELS = ("sentiment", "sentiment_scores", "behaviours", "topic")


class RecordingTracker(StoryTracker):
    """The tracker, remembering which story each post joined and the time it spent."""

    def __init__(self, window_s: int) -> None:
        super().__init__(window_s)
        self.joined: dict[str, str] = {}
        self.seconds = 0.0
        self.calls = 0

    def counted(self, mention: BrandMention, offset: int | None) -> list[Output]:
        started = time.perf_counter()
        try:
            return super().counted(mention, offset)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def place(self, state: StoryState, mention: BrandMention, x: Vector, outputs: list[Output]) -> Story:
        story = super().place(state, mention, x, outputs)
        if mention.brand == "Acme":
            self.joined[mention.post_id] = story.id
        return story


def evaluate(seed: int, classify: object) -> dict[str, object]:
    spec = StreamSpec(minutes=40, seed=seed, brands=BRANDS, bursts=list(TOPIC_BURSTS))
    posts = synthetic_posts(spec, load_rated_tweets())
    truth = {str(p["id"]): str(p.get("topic", "background")) for p in posts}
    records = [msgspec.json.encode({k: v for k, v in p.items() if k not in LABELS}) for p in posts]
    config = MonitorConfig()
    tracker = RecordingTracker(config.window_s)
    started = time.perf_counter()
    result = run_backtest(
        records,
        BrandCatalog.from_yaml_text(demo_brands_yaml(BRANDS)),
        build_validator(Settings()),
        classify,  # type: ignore[arg-type]
        config,
        stories=tracker,
    )
    elapsed = time.perf_counter() - started
    born = {u.story_id for u in result.stories if u.event == "born"}
    joined = tracker.joined
    members: dict[str, Counter[str]] = {}
    for post_id, story in joined.items():
        members.setdefault(story, Counter())[truth[post_id]] += 1
    topics: dict[str, dict[str, object]] = {}
    for burst in TOPIC_BURSTS:
        assert burst.topic is not None
        stories = Counter(story for post_id, story in joined.items() if truth[post_id] == burst.topic)
        dominant, held = stories.most_common(1)[0]
        topics[burst.topic] = {
            "posts": sum(stories.values()),
            "story": dominant,
            "born": dominant in born,
            "recall": round(held / sum(stories.values()), 3),
            "purity": round(held / sum(members[dominant].values()), 3),
            "stories_holding_it": len(stories),
        }
    topic_posts = [p for p in joined if truth[p] != "background"]
    everything = list(joined)
    crisis = [a for a in result.alerts if a.brand == "Acme" and a.status != "resolved"]
    named = [
        {
            "alert": a.alert_id,
            "status": a.status,
            "window_start_min": (a.window.start - spec.start_ms) / 60_000,
            "stories": [
                {"label": s.label, "posts": s.posts, "topic": members[s.story_id].most_common(1)[0][0]}
                for s in a.stories
            ],
        }
        for a in crisis
    ]
    return {
        "seed": seed,
        "acme_posts_clustered": len(joined),
        "topics": topics,
        "separate_stories": len({t["story"] for t in topics.values()}) == len(topics),
        "ari_topic_posts": round(
            adjusted_rand_score([truth[p] for p in topic_posts], [joined[p] for p in topic_posts]), 3
        ),
        "ari_all_posts": round(
            adjusted_rand_score(
                [truth[p] for p in everything],
                [joined[p] if joined[p] in born else "unclustered" for p in everything],
            ),
            3,
        ),
        "born_stories": len({s for s in born if s.startswith("Acme:")}),
        "born_mostly_background": sum(
            1 for s in born if s in members and members[s].most_common(1)[0][0] == "background"
        ),
        "alerts": named,
        "tracker_us_per_mention": round(1e6 * tracker.seconds / max(1, tracker.calls), 1),
        "backtest_s": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=Settings().model_dir)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    classify = onnx_classifier(args.model_dir)
    runs = [evaluate(seed, classify) for seed in range(args.seeds)]
    if args.json:
        print(json.dumps(runs))
        return
    print("| seed | topic | posts | recall | purity | stories holding it | ARI topic posts | ARI all posts |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        for name, topic in run["topics"].items():  # type: ignore[attr-defined]
            print(
                f"| {run['seed']} | {name} | {topic['posts']} | {topic['recall']} | {topic['purity']} | "
                f"{topic['stories_holding_it']} | {run['ari_topic_posts']} | {run['ari_all_posts']} |"
            )
    for run in runs:
        print(
            f"seed {run['seed']}: separate stories {run['separate_stories']}, born {run['born_stories']} "
            f"(mostly background {run['born_mostly_background']}), tracker {run['tracker_us_per_mention']} us/mention, "
            f"alerts {json.dumps(run['alerts'])}"
        )


if __name__ == "__main__":
    main()
