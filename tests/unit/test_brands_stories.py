"""Stories: topic bursts in a stream of real posts come out as separate, stable stories that alerts name.

Embeddings are synthetic (synthetic.synthetic_embedding: a direction per sentiment label dominates, as in the
real model, plus one per topic), so these need no model; bench/stories.py measures the real model's.
"""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from stream.brands.model import Alert, BrandState, Output, StoryUpdate
from stream.brands.monitor import BrandMonitor, MonitorConfig
from stream.brands.stories import Story, StoryState, StoryTracker, Vector
from stream.brands.synthetic import Burst, StreamSpec, load_rated_tweets, synthetic_embedding, synthetic_posts
from stream.brands.webhook import alertmanager_alerts
from stream.emit import compact_embedding
from stream.schema import BrandMention

MINUTE = 60_000
TOPICS = ("double_charge", "outage")


def mentions(spec: StreamSpec, embeddings: bool = True) -> tuple[list[BrandMention], dict[str, str]]:
    """One brand's mentions, and each post's topic ("background" for the real tweets)."""
    found, topics = [], {}
    for post in synthetic_posts(spec, load_rated_tweets()):
        post_id, sentiment = str(post["id"]), str(post["sentiment"])
        topic = str(post["topic"]) if "topic" in post else None
        author = post["author"]
        assert isinstance(author, dict)
        found.append(
            BrandMention(
                post_id=post_id,
                brand="Acme",
                text=str(post["text"]),
                created_at=int(post["created_at"]),  # type: ignore[call-overload]
                author_id=author["id"],
                followers=author["followers"],
                platform=str(post["platform"]),
                language="en",
                sentiment=sentiment,
                sentiment_scores=post["sentiment_scores"],  # type: ignore[arg-type]
                behaviours=post["behaviours"],  # type: ignore[arg-type]
                behaviour_scores={},
                embedding_f16=compact_embedding(synthetic_embedding(post_id, sentiment, topic)) if embeddings else None,
            )
        )
        topics[post_id] = topic or "background"
    return found, topics


def burst_spec(seed: int = 0) -> StreamSpec:
    """30 minutes of one brand at 20 posts/min; two topics at 40 posts/min each over minutes 15-18."""
    bursts = [Burst("Acme", 15.0, minutes=3, per_minute=40, topic=topic) for topic in TOPICS]
    return StreamSpec(minutes=30, per_minute=20, brands=("Acme",), unbranded_share=0.0, seed=seed, bursts=bursts)


class Recorder(StoryTracker):
    """Remembers the story each post joined."""

    def __init__(self, window_s: int) -> None:
        super().__init__(window_s)
        self.joined: dict[str, str] = {}

    def place(self, state: StoryState, mention: BrandMention, x: Vector, outputs: list[Output]) -> Story:
        story = super().place(state, mention, x, outputs)
        self.joined[mention.post_id] = story.id
        return story


def run(
    stream: list[BrandMention], tracker: StoryTracker | None = None, monitor: BrandMonitor | None = None
) -> list[Output]:
    config = MonitorConfig()
    monitor = monitor or BrandMonitor(config, stories=tracker or StoryTracker(config.window_s))
    outputs: list[Output] = []
    for offset, mention in enumerate(stream):
        outputs += monitor.advance(mention.created_at) + monitor.observe(mention, offset)
    return outputs + monitor.advance(stream[-1].created_at + 30 * MINUTE)


def updates(outputs: list[Output]) -> list[StoryUpdate]:
    return [o for o in outputs if isinstance(o, StoryUpdate)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concurrent_injected_topics_come_out_as_separate_pure_stories(seed: int) -> None:
    stream, topics = mentions(burst_spec(seed))
    tracker = Recorder(MonitorConfig().window_s)
    born = {u.story_id for u in updates(run(stream, tracker)) if u.event == "born"}
    members: dict[str, Counter[str]] = {}
    for post_id, story in tracker.joined.items():
        members.setdefault(story, Counter())[topics[post_id]] += 1
    dominant = {}
    for topic in TOPICS:
        held = Counter(s for p, s in tracker.joined.items() if topics[p] == topic)
        story, count = held.most_common(1)[0]
        dominant[topic] = story
        assert story in born
        assert count / sum(held.values()) >= 0.8, (topic, held)  # recall
        assert members[story][topic] / sum(members[story].values()) >= 0.9, (topic, members[story])  # purity
    assert len(set(dominant.values())) == len(TOPICS)
    # The real tweets around them form no story of their own.
    assert born == set(dominant.values()), {s: members[s] for s in born}


def test_the_same_stream_gives_the_same_stories_and_a_restored_state_goes_on_identically() -> None:
    stream, _ = mentions(burst_spec())
    once = run(stream)
    assert updates(once) and run(stream) == once
    # Cut mid-burst, every state through msgspec JSON and back, as the worker's tables restore it.
    cut = next(i for i, m in enumerate(stream) if m.created_at >= stream[0].created_at + 16 * MINUTE + 20_000)
    config = MonitorConfig()
    first = BrandMonitor(config, stories=StoryTracker(config.window_s))
    outputs: list[Output] = []
    for offset, mention in enumerate(stream[:cut]):
        outputs += first.advance(mention.created_at) + first.observe(mention, offset)
    assert first.stories is not None and isinstance(first.stories, StoryTracker)
    states = {k: msgspec.json.decode(msgspec.json.encode(v), type=StoryState) for k, v in first.stories.states.items()}
    brands = {k: msgspec.json.decode(msgspec.json.encode(v), type=BrandState) for k, v in first.brands.items()}
    authors = dict(first.authors)
    restored = BrandMonitor(config, brands, authors, StoryTracker(config.window_s, states=states))
    for offset, mention in enumerate(stream[cut:], start=cut):
        outputs += restored.advance(mention.created_at) + restored.observe(mention, offset)
    outputs += restored.advance(stream[-1].created_at + 30 * MINUTE)
    assert outputs == once


def test_records_replayed_after_stories_were_flushed_ahead_of_the_brand_state_are_not_counted_twice() -> None:
    """The worker flushes the story table before the brand states: a worker killed between the two restarts
    with the stories ahead, and the records in between come again with the same offsets."""
    stream, _ = mentions(burst_spec())
    once = run(stream)
    config = MonitorConfig()
    tracker = StoryTracker(config.window_s)
    monitor = BrandMonitor(config, stories=tracker)
    behind, ahead = (
        next(i for i, m in enumerate(stream) if m.created_at >= stream[0].created_at + t * MINUTE) for t in (16, 17)
    )
    outputs: list[Output] = []
    brand_snapshot = b""
    for offset, mention in enumerate(stream[:ahead]):
        if offset == behind:
            brand_snapshot = msgspec.json.encode(monitor.brands["Acme"])
            authors_snapshot = {k: msgspec.json.encode(v) for k, v in monitor.authors.items()}
        outputs += monitor.advance(mention.created_at) + monitor.observe(mention, offset)
    restarted = BrandMonitor(
        config,
        {"Acme": msgspec.json.decode(brand_snapshot, type=BrandState)},
        {k: msgspec.json.decode(v, type=type(monitor.authors[k])) for k, v in authors_snapshot.items()},
        StoryTracker(config.window_s, states=dict(tracker.states)),
    )
    replayed: list[Output] = []
    for offset, mention in enumerate(stream[behind:], start=behind):
        replayed += restarted.advance(mention.created_at) + restarted.observe(mention, offset)
    replayed += restarted.advance(stream[-1].created_at + 30 * MINUTE)
    # Outputs between the snapshot and the kill are sent again (at least once); the stories count each post once.
    final = [u for u in updates(once) if u.window.start >= stream[ahead].created_at - MINUTE]
    assert [u for u in updates(replayed) if u.window.start >= stream[ahead].created_at - MINUTE] == final


def test_a_topic_story_is_born_grows_and_fades() -> None:
    spec = burst_spec()
    stream, _ = mentions(spec)
    events: dict[str, list[tuple[str, int]]] = {}
    for update in updates(run(stream)):
        events.setdefault(update.story_id, []).append((update.event, (update.window.start - spec.start_ms) // MINUTE))
    topic_stories = [e for e in events.values() if e[0][0] == "born" and 15 <= e[0][1] <= 16]
    assert len(topic_stories) == 2, events
    for story in topic_stories:
        kinds = [kind for kind, _ in story]
        assert kinds[0] == "born" and "growing" in kinds and kinds[-1] == "faded", story
        # Faded once fade_windows (5) windows passed without posts after the burst ended at minute 18.
        assert 20 <= story[-1][1] <= 24, story


def test_the_crisis_alert_names_the_stories_that_drive_it() -> None:
    spec = burst_spec()
    spec.bursts = spec.bursts[:1]
    stream, topics = mentions(spec)
    tracker = Recorder(MonitorConfig().window_s)
    outputs = run(stream, tracker)
    (firing,) = [o for o in outputs if isinstance(o, Alert) and o.status == "firing"]
    assert firing.kind == "crisis" and firing.stories, firing
    top = firing.stories[0]
    # The story most of the burst's posts joined.
    held = Counter(story for post_id, story in tracker.joined.items() if topics[post_id] == "double_charge")
    assert top.story_id == held.most_common(1)[0][0], (top, held)
    assert top.story_id in {u.story_id for u in updates(outputs) if u.event == "born"}
    assert top.posts >= 10 and top.negative_share == 1.0
    assert top.describe() == f"story: '{top.label}', {top.posts} posts, 100 % negative"
    (posted,) = alertmanager_alerts(firing, posted_ms=firing.window.end)
    assert posted["annotations"]["top_story"] == top.describe()
    (resolved,) = [o for o in outputs if isinstance(o, Alert) and o.status == "resolved"]
    assert resolved.stories == []


def test_without_embeddings_there_are_no_stories_and_old_alerts_still_decode() -> None:
    stream, _ = mentions(burst_spec(), embeddings=False)
    outputs = run(stream)
    alerts = [o for o in outputs if isinstance(o, Alert)]
    assert alerts and not updates(outputs) and all(a.stories == [] for a in alerts)
    old = msgspec.json.decode(msgspec.json.encode(alerts[0]))
    del old["stories"]
    assert msgspec.json.decode(msgspec.json.encode(old), type=Alert) == alerts[0]
