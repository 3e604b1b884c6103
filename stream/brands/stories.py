"""Stories: what a brand's posts are about, by online clustering of the model's pooled embedding.

Shared by the worker (state in a Faust table, `brand-monitor-stories`) and the backtest (a dict), as the
monitor is: BrandMonitor calls the tracker (its `StoryHooks`) with every mention it counts, at every tumbling
window close, and with every alert it raises. Like the monitor it never looks at a wall clock.

- **Frame.** The pooled embedding of the fine-tuned model is dominated by sentiment: on the rated tweets, a
  negative background post was as close to a complaint topic's centroid (cosine 0.83 at the 99th
  percentile) as the topic's own posts. So posts are compared in a frame with the brand's mean embedding
  removed and the directions that separate its sentiment classes (each label's mean minus the overall mean)
  projected out; there the same background posts fall to 0.2-0.3 and topic posts stay at 0.65-0.95. The
  means are running means over the brand's last `frame_memory` embedded mentions outside born stories, and
  the projection is fixed from them at each window close; the first `warmup_posts` only build the frame.
- **Leader clustering.** A post joins the story whose centroid (in the frame) is the most similar if that
  cosine is at least `join_similarity`; otherwise it starts a story. Centroids are kept in the model's space
  (the mean of the members' embeddings over the last `centroid_memory` posts) and projected at comparison
  time, so they stay valid while the frame moves. At each window close, stories whose centroids have come
  within `merge_similarity` merge (a topic's first posts often start several). At most `max_stories` stories
  per brand: a new one evicts the one with the fewest recent posts (an unpublished one first).
- **Events,** at each tumbling window close: `born` when a story reaches `min_posts` posts in its last
  `born_windows` windows; `growing` when a born story has `min_posts` posts in the window and
  `grow_factor` times its mean of the previous `baseline_windows` windows; `faded` when a born story has
  fewer than `fade_posts` posts in its last `fade_windows` windows, is evicted or is merged into another
  (`merged_into`), and it is then dropped.
- **Alerts** name the born stories whose growth in the alert's window (posts above their own mean of the
  previous windows; negative posts for negativity spikes and crises) accounts for `explain_share` of the
  stories' growth, largest first, at most `alert_stories`.

State is bounded per brand whatever the volume: `max_stories` stories, each with a float32 centroid, at most
`history_windows` window counts, `story_terms` terms (Misra-Gries) and `examples` representative posts of
each kind with texts cut to `example_chars`. A record replayed after a restore is recognised by its
mentions-topic offset (`StoryState.applied_offset`) and a window closed twice by `closed_until`.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.brands import noise
from stream.brands.model import Alert, Example, Output, StoryEvent, StoryRef, StoryUpdate, Window
from stream.brands.monitor import _count_terms, sentiment_value
from stream.schema import BrandMention

Vector = npt.NDArray[np.float32]


class StoryConfig(BaseSettings):
    """Story knobs: env vars `SOCIALPULSE_STORIES_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="SOCIALPULSE_STORIES_", frozen=True, extra="ignore")

    max_stories: int = Field(24, description="Stories kept per brand (the state's bound).")
    join_similarity: float = Field(0.3, description="Cosine (in the frame) at which a post joins a story.")
    warmup_posts: int = Field(50, description="A brand's first embedded mentions only build the frame.")
    frame_memory: int = Field(2000, description="Mentions the frame's running means cover.")
    centroid_memory: int = Field(50, description="Posts a story's running centroid covers.")
    merge_similarity: float = Field(0.6, description="Cosine of two stories' centroids at which they merge.")
    min_posts: int = Field(10, description="Posts in born_windows windows for a story to be born.")
    born_windows: int = Field(3, description="Windows over which min_posts are counted.")
    grow_factor: float = Field(2.0, description="Growing: this many times the mean of the previous windows.")
    baseline_windows: int = Field(5, description="Previous windows a story's growth is measured against.")
    fade_windows: int = Field(5, description="Windows of near silence after which a born story fades.")
    fade_posts: int = Field(2, description="Fewer posts than this in fade_windows windows: faded.")
    history_windows: int = Field(15, description="Window counts kept per story (sizes in story records).")
    story_terms: int = Field(20, description="Terms counted per story (Misra-Gries capacity).")
    top_terms: int = Field(5, description="Terms per story in records and alerts.")
    examples: int = Field(2, description="Representative posts per kind (closest to the centroid, most followed).")
    example_chars: int = Field(200, description="Representative texts are cut to this many characters.")
    label_chars: int = Field(80, description="A story's label: its most central post, cut to this many characters.")
    alert_stories: int = Field(3, description="Most stories an alert names.")
    explain_share: float = Field(0.8, description="Alerts name stories until they cover this share of growth.")


# ----------------------------------------------------------------------------------------------- state


class StoryWindow(msgspec.Struct, array_like=True):
    start: int
    posts: int = 0
    negative: int = 0


class Representative(msgspec.Struct, array_like=True):
    example: Example
    # The post's embedding (float16, as on the mention), to rank it against the moving centroid.
    embedding: bytes


class Story(msgspec.Struct):
    id: str
    first_seen: int
    # float32 little-endian: the running mean of the members' embeddings, in the model's space.
    centroid: bytes
    posts: int = 0
    last_seen: int = 0
    born: bool = False
    # Windows with posts, oldest first, at most history_windows.
    windows: list[StoryWindow] = msgspec.field(default_factory=list)
    sentiments: dict[str, int] = msgspec.field(default_factory=dict)
    terms: dict[str, int] = msgspec.field(default_factory=dict)
    nearest: list[Representative] = msgspec.field(default_factory=list)
    top_followed: list[Example] = msgspec.field(default_factory=list)


class LabelMean(msgspec.Struct, array_like=True):
    count: int
    mean: bytes  # float32 little-endian


class Frame(msgspec.Struct):
    """Running means of a brand's embeddings, overall and per sentiment label, and the projection posts are
    compared in. The projection is fixed from the means at each window close, so a window's posts and
    centroids are compared alike (and a replay computes the same)."""

    overall: LabelMean | None = None
    labels: dict[str, LabelMean] = msgspec.field(default_factory=dict)
    # float32 little-endian: the centre (dim values) and the sentiment directions (rows of dim); empty
    # until warmup_posts.
    centre: bytes = b""
    basis: bytes = b""


class StoryState(msgspec.Struct):
    brand: str
    # The mentions-topic offset of the last record applied here (see BrandState.applied_offset).
    applied_offset: int = -1
    # Tumbling windows ending at or before this have been closed here.
    closed_until: int = 0
    frame: Frame = msgspec.field(default_factory=Frame)
    stories: list[Story] = msgspec.field(default_factory=list)


# --------------------------------------------------------------------------------------------- tracker


def _vectors(raw: bytes, dtype: str, dim: int | None = None) -> Vector:
    vectors = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    return vectors if dim is None else vectors.reshape(-1, dim)


def _unit(vectors: npt.NDArray[Any]) -> Vector:
    """Each row (or the vector) scaled to length 1."""
    norms = np.sqrt(np.einsum("...i,...i->...", vectors, vectors))
    return np.asarray(vectors / np.maximum(norms, 1e-12)[..., None], dtype=np.float32)


def _running_mean(mean: LabelMean | None, x: Vector, memory: int) -> LabelMean:
    if mean is None:
        return LabelMean(1, x.astype("<f4").tobytes())
    current = _vectors(mean.mean, "<f4")
    return LabelMean(mean.count + 1, _f32(current + (x - current) / min(mean.count + 1, memory)))


def _f32(vector: npt.NDArray[Any]) -> bytes:
    return vector.astype("<f4").tobytes()


def story_id(brand: str, post_id: str) -> str:
    """Stable: the brand and the post that started the story."""
    digest = hashlib.blake2b(post_id.encode(errors="surrogatepass"), digest_size=6).hexdigest()
    return f"{brand}:story:{digest}"


class Projection:
    """A brand's frame as a map: centre on the brand's mean embedding, remove its sentiment directions."""

    def __init__(self, frame: Frame) -> None:
        self.mean = _vectors(frame.centre, "<f4")
        self.basis = _vectors(frame.basis, "<f4", len(self.mean))

    def __call__(self, x: Vector) -> Vector:
        """One vector, or one per row; the result has unit rows."""
        centred = x - self.mean
        return _unit(centred - (centred @ self.basis.T) @ self.basis)


class StoryTracker:
    """The monitor's StoryHooks over `states` (brand -> StoryState); `window_s` is the monitor's window."""

    def __init__(
        self,
        window_s: int,
        config: StoryConfig | None = None,
        states: MutableMapping[str, StoryState] | None = None,
    ) -> None:
        self.config = config or StoryConfig()
        self.states: MutableMapping[str, StoryState] = {} if states is None else states
        self._window_ms = window_s * 1000

    # ------------------------------------------------------------------------------------ counted

    def counted(self, mention: BrandMention, offset: int | None) -> list[Output]:
        if mention.embedding_f16 is None:
            return []
        state = self.states.get(mention.brand) or StoryState(mention.brand)
        if offset is not None and offset <= state.applied_offset:
            return []
        overall = state.frame.overall
        if overall is not None and len(overall.mean) != 2 * len(mention.embedding_f16):
            # Another model (another embedding size): what was learnt from the old one does not apply.
            state = StoryState(mention.brand, closed_until=state.closed_until)
        if offset is not None:
            state.applied_offset = offset
        outputs: list[Output] = []
        x = _unit(_vectors(mention.embedding_f16, "<f2"))
        story = self.place(state, mention, x, outputs) if state.frame.centre else None
        # A born story's posts stay out of the frame: in the sentiment means they tilt those directions towards
        # the story's topic, and the rest of that sentiment then clusters (bench/stories.py: ARI over all
        # posts 0.57-0.84 without them, 0.58-0.69 with).
        if story is None or not story.born:
            frame, memory = state.frame, self.config.frame_memory
            frame.overall = _running_mean(frame.overall, x, memory)
            frame.labels[mention.sentiment] = _running_mean(frame.labels.get(mention.sentiment), x, memory)
            if not frame.centre and frame.overall.count >= self.config.warmup_posts:
                self._refresh_frame(frame)
        self.states[mention.brand] = state
        return outputs

    def place(self, state: StoryState, mention: BrandMention, x: Vector, outputs: list[Output]) -> Story:
        """Add the post to the story it is most similar to, or to a new one; returns the story."""
        c = self.config
        project = Projection(state.frame)
        story: Story | None = None
        if state.stories:
            centroids = project(_vectors(b"".join(s.centroid for s in state.stories), "<f4", len(x)))
            similarities = centroids @ project(x)
            best = int(np.argmax(similarities))
            if similarities[best] >= c.join_similarity:
                story = state.stories[best]
        if story is None:
            if len(state.stories) >= c.max_stories:
                self._evict(state, mention.created_at, outputs)
            story = Story(story_id(state.brand, mention.post_id), mention.created_at, _f32(x))
            state.stories.append(story)
        else:
            current = _vectors(story.centroid, "<f4")
            story.centroid = _f32(current + (x - current) / min(story.posts + 1, c.centroid_memory))
        self._add(state.brand, story, mention, project)
        return story

    def _add(self, brand: str, story: Story, mention: BrandMention, project: Projection) -> None:
        c, t = self.config, mention.created_at
        story.posts += 1
        story.last_seen = max(story.last_seen, t)
        start = t - t % self._window_ms
        window = next((w for w in story.windows if w.start == start), None)
        if window is None:
            window = StoryWindow(start)
            story.windows.append(window)
            story.windows.sort(key=lambda w: w.start)
            del story.windows[: -c.history_windows]
        window.posts += 1
        window.negative += mention.sentiment == "negative"
        story.sentiments[mention.sentiment] = story.sentiments.get(mention.sentiment, 0) + 1
        terms = {term for term in noise.terms(mention.text) if term.lstrip("#") != brand.casefold()}
        _count_terms(story.terms, terms, c.story_terms)
        text = mention.text if len(mention.text) <= c.example_chars else mention.text[: c.example_chars - 1] + "…"
        value = round(sentiment_value(mention.sentiment_scores), 4)
        example = Example(mention.post_id, mention.author_id, mention.followers, text, mention.sentiment, value)
        assert mention.embedding_f16 is not None
        self._rank(story, [*story.nearest, Representative(example, mention.embedding_f16)], project)
        story.top_followed = _most_followed([*story.top_followed, example], c.examples)

    def _rank(self, story: Story, candidates: list[Representative], project: Projection) -> None:
        """Keep the candidates closest to the story's centroid as it is now."""
        centre = project(_vectors(story.centroid, "<f4"))
        dim = len(centre)
        closeness = project(_vectors(b"".join(r.embedding for r in candidates), "<f2", dim)) @ centre
        order = sorted(range(len(candidates)), key=lambda i: (-float(closeness[i]), candidates[i].example.post_id))
        story.nearest = [candidates[i] for i in order[: self.config.examples]]

    def _evict(self, state: StoryState, now: int, outputs: list[Output]) -> None:
        start = now - now % self._window_ms
        recent = start - self.config.fade_windows * self._window_ms
        victim = min(
            state.stories,
            key=lambda s: (s.born, sum(w.posts for w in s.windows if w.start > recent), s.last_seen, s.id),
        )
        state.stories.remove(victim)
        if victim.born:
            outputs.append(self._update(state.brand, victim, "faded", start, start + self._window_ms))

    def _refresh_frame(self, frame: Frame) -> None:
        """Fix the projection from the running means: each label's mean minus the overall mean, orthonormalised."""
        assert frame.overall is not None
        mean = _vectors(frame.overall.mean, "<f4")
        directions = np.stack([_vectors(frame.labels[label].mean, "<f4") - mean for label in sorted(frame.labels)])
        q, r = np.linalg.qr(directions.T)
        frame.centre = frame.overall.mean
        frame.basis = _f32(q[:, np.abs(np.diag(r)) > 1e-6].T)

    # ------------------------------------------------------------------------------------- closed

    def closed(self, brand: str, start: int, end: int) -> list[Output]:
        state = self.states.get(brand)
        if state is None or end <= state.closed_until:
            return []
        state.closed_until = end
        outputs: list[Output] = []
        if state.frame.centre:
            self._merge(state, start, end, outputs)
            self._refresh_frame(state.frame)
        kept: list[Story] = []
        for story in state.stories:
            event = self._event(story, start)
            if event is not None:
                outputs.append(self._update(brand, story, event, start, end))
            story.born = story.born or event == "born"
            quiet = self._posts(story, start - (self.config.fade_windows - 1) * self._window_ms, end) == 0
            if event != "faded" and (story.born or not quiet):
                kept.append(story)
        state.stories = kept
        self.states[brand] = state
        return outputs

    def _merge(self, state: StoryState, start: int, end: int, outputs: list[Output]) -> None:
        """Stories whose centroids have come to match become one: born ones absorb, then larger ones."""
        if len(state.stories) < 2:
            return
        project = Projection(state.frame)
        order = sorted(state.stories, key=lambda s: (not s.born, -s.posts, s.id))
        dim = len(state.frame.centre) // 4
        centroids = project(_vectors(b"".join(s.centroid for s in order), "<f4", dim))
        kept: list[int] = []
        for i, story in enumerate(order):
            if kept:
                similarities = centroids[kept] @ centroids[i]
                best = int(np.argmax(similarities))
                if similarities[best] >= self.config.merge_similarity:
                    into = order[kept[best]]
                    if story.born:
                        outputs.append(self._update(state.brand, story, "faded", start, end, merged_into=into.id))
                    self._absorb(into, story, project)
                    continue
            kept.append(i)
        state.stories = [order[i] for i in kept]

    def _absorb(self, into: Story, other: Story, project: Projection) -> None:
        c = self.config
        a, b = min(into.posts, c.centroid_memory), min(other.posts, c.centroid_memory)
        into.centroid = _f32((_vectors(into.centroid, "<f4") * a + _vectors(other.centroid, "<f4") * b) / (a + b))
        into.posts += other.posts
        into.first_seen = min(into.first_seen, other.first_seen)
        into.last_seen = max(into.last_seen, other.last_seen)
        windows = {w.start: StoryWindow(w.start, w.posts, w.negative) for w in into.windows}
        for w in other.windows:
            merged = windows.setdefault(w.start, StoryWindow(w.start))
            merged.posts += w.posts
            merged.negative += w.negative
        into.windows = sorted(windows.values(), key=lambda w: w.start)[-c.history_windows :]
        for label, count in other.sentiments.items():
            into.sentiments[label] = into.sentiments.get(label, 0) + count
        terms = dict(into.terms)
        for term, count in other.terms.items():
            terms[term] = terms.get(term, 0) + count
        into.terms = dict(sorted(terms.items(), key=lambda item: (-item[1], item[0]))[: c.story_terms])
        self._rank(into, [*into.nearest, *other.nearest], project)
        into.top_followed = _most_followed([*into.top_followed, *other.top_followed], c.examples)

    def _event(self, story: Story, start: int) -> StoryEvent | None:
        c, w = self.config, self._window_ms
        if not story.born:
            return "born" if self._posts(story, start - (c.born_windows - 1) * w, start + w) >= c.min_posts else None
        size = self._posts(story, start, start + w)
        if size >= c.min_posts and size >= c.grow_factor * max(self._previous_mean(story, start), 1.0):
            return "growing"
        if self._posts(story, start - (c.fade_windows - 1) * w, start + w) < c.fade_posts:
            return "faded"
        return None

    def _posts(self, story: Story, start: int, end: int, negative: bool = False) -> int:
        return sum(w.negative if negative else w.posts for w in story.windows if start <= w.start < end)

    def _previous_mean(self, story: Story, start: int, negative: bool = False) -> float:
        windows = self.config.baseline_windows
        return self._posts(story, start - windows * self._window_ms, start, negative) / windows

    def _update(
        self, brand: str, story: Story, event: StoryEvent, start: int, end: int, merged_into: str | None = None
    ) -> StoryUpdate:
        c, w = self.config, self._window_ms
        first = max(start - (c.history_windows - 1) * w, story.first_seen - story.first_seen % w)
        counts = {window.start: window.posts for window in story.windows}
        total = sum(story.sentiments.values())
        return StoryUpdate(
            story_id=story.id,
            brand=brand,
            event=event,
            window=Window("tumbling", start, end),
            label=self._label(story),
            posts=counts.get(start, 0),
            sizes=[counts.get(s, 0) for s in range(first, start + w, w)],
            previous_mean=round(self._previous_mean(story, start), 3),
            total_posts=story.posts,
            sentiment=dict(sorted(story.sentiments.items())),
            sentiment_mix={k: round(v / total, 4) for k, v in sorted(story.sentiments.items())} if total else {},
            top_terms=self._top_terms(story),
            representatives=[r.example for r in story.nearest],
            top_followed=story.top_followed,
            first_seen=story.first_seen,
            last_seen=story.last_seen,
            merged_into=merged_into,
        )

    def _label(self, story: Story) -> str:
        text = " ".join(story.nearest[0].example.text.split()) if story.nearest else ""
        limit = self.config.label_chars
        if len(text) <= limit:
            return text
        cut = text[: limit - 1]
        return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + "…"

    def _top_terms(self, story: Story) -> list[str]:
        ranked = sorted(story.terms.items(), key=lambda item: (-item[1], item[0]))
        return [term for term, count in ranked[: self.config.top_terms] if count > 1]

    # ------------------------------------------------------------------------------------ explain

    def explain(self, alert: Alert) -> Alert:
        state = self.states.get(alert.brand)
        if state is None or alert.status == "resolved":
            return alert
        return msgspec.structs.replace(alert, stories=self.driving(state, alert))

    def driving(self, state: StoryState, alert: Alert) -> list[StoryRef]:
        c, start = self.config, alert.window.start
        negative = alert.kind != "volume_spike"
        growth = []
        for story in state.stories:
            if not story.born:
                continue
            excess = self._posts(story, start, alert.window.end, negative) - self._previous_mean(story, start, negative)
            if excess > 0:
                growth.append((excess, story))
        growth.sort(key=lambda item: (-item[0], item[1].id))
        total = sum(excess for excess, _ in growth)
        named: list[StoryRef] = []
        covered = 0.0
        for excess, story in growth[: c.alert_stories]:
            if covered >= c.explain_share * total:
                break
            covered += excess
            posts = self._posts(story, start, alert.window.end)
            named.append(
                StoryRef(
                    story_id=story.id,
                    label=self._label(story),
                    posts=posts,
                    negative_share=round(self._posts(story, start, alert.window.end, True) / max(posts, 1), 4),
                    growth=round(excess, 3),
                    total_posts=story.posts,
                    top_terms=self._top_terms(story),
                )
            )
        return named


def _most_followed(examples: list[Example], n: int) -> list[Example]:
    unique = {e.post_id: e for e in examples}.values()
    return sorted(unique, key=lambda e: (-e.followers, e.post_id))[:n]
