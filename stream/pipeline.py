"""The processor's core: validate -> batch -> infer -> emit -> ack, with acks strictly after output acks.

Ingest hands every record to `submit` with an ack callback. A record is acknowledged to Faust (and so
becomes committable) only after every record produced from it, event or dead letter, was acknowledged
by Kafka. Inference runs in one worker thread per model (ONNX Runtime releases the GIL) so the event loop
keeps heartbeating; the next window is tokenized while the current batch runs.

Each model is a lane (its batcher and token budget, backend, inference thread and manifest). A valid post goes
to the first lane whose model serves its language (ValidPost.language, as validation decided it), so English
can take a fast English model and other languages a multilingual one. Acks do not depend on the lane: every
record reaches the same ack callback, so the offset sequencer sees each one whichever lane served it.

A post naming two or more brands is also classified per brand (stream/brands/aspects.py): each brand's span
runs as an extra row of the post's batch, so posts naming one brand pay nothing for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from models.manifest import Manifest
from stream.backends.base import InferenceBackend
from stream.batch import Batch, Batcher, Job
from stream.brands.aspects import BrandSpan, Scored, brand_sentiments, split_brands
from stream.brands.query import HintedBrands, Matcher, post_brands
from stream.emit import Emitter, Enriched, now_ms
from stream.infer import Prediction, predict
from stream.metrics import Metrics
from stream.schema import ModelRef, RejectReason
from stream.serving import route
from stream.validate import Rejection, SourceRef, Validator, ValidPost

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[object]]

SENTIMENT_HEAD = "sentiment"
BEHAVIOUR_HEAD = "behaviour"


class BatchObserver(Protocol):
    """Told about every delivered batch (the live page's rolling stats)."""

    def record_batch(
        self,
        now_s: float,
        *,
        posts: int,
        brands_sentiments: Iterable[tuple[str, str]] = (),
        languages: Iterable[str] = (),
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Ticket:
    valid: ValidPost
    # The record as consumed: a post the model cannot run is dead-lettered as it arrived, replayable.
    raw: bytes
    source: SourceRef
    ingested_at_ms: int
    ack: Ack
    # Each brand's part of a post naming several (classified as the job's extra texts, in this order).
    spans: tuple[BrandSpan, ...] = ()


class PipelineFailed(RuntimeError):
    """Outputs could not be delivered; the worker must stop so uncommitted input is redelivered."""


@dataclass(eq=False)
class Lane:
    """One model and everything that runs it: posts in `languages` (empty: any) are batched and inferred here."""

    batcher: Batcher[Ticket]
    backend: InferenceBackend
    manifest: Manifest
    languages: frozenset[str] = frozenset()
    thread: ThreadPoolExecutor = field(init=False)
    # One row that inference last ran on (before any: the warm-up's shape), to tell bad posts from a
    # broken model when every post of a batch fails.
    known_good: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] = field(init=False)
    busy_seconds: float = field(init=False, default=0.0)
    busy_since: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"socialpulse-infer-{self.name}")
        ones = np.ones((1, 8), dtype=np.int64)
        self.known_good = (ones, ones)

    @property
    def name(self) -> str:
        """The model's name: the `model` label of per-lane metrics."""
        return self.manifest.name

    @property
    def model(self) -> ModelRef:
        return ModelRef(self.manifest.name, self.manifest.version, self.backend.variant)

    def busy_ratio(self) -> float:
        """Share of wall time inference ran since the last call."""
        now = time.monotonic()
        ratio = self.busy_seconds / max(now - self.busy_since, 1e-9)
        self.busy_seconds, self.busy_since = 0.0, now
        return min(ratio, 1.0)


class Pipeline:
    def __init__(
        self,
        *,
        validator: Validator,
        lanes: Sequence[Lane],
        emitter: Emitter,
        metrics: Metrics,
        matcher: Matcher | None = None,
        observer: BatchObserver | None = None,
        probe_attempts: int = 3,
        hinted_brands: int = 200,
        max_inflight_dead_letters: int = 1024,
        brand_spans: bool = True,
    ) -> None:
        if not lanes:
            raise ValueError("a pipeline needs at least one lane")
        self._validator = validator
        self._lanes = list(lanes)
        self._emitter = emitter
        self._metrics = metrics
        self._matcher = matcher
        self._observer = observer
        self._probe_attempts = probe_attempts
        self._brand_spans = brand_spans
        self._hints = HintedBrands(hinted_brands)
        # Rejections skip the batcher and its token bound; without their own bound a flood of invalid records
        # under a slow broker grew one task per record without end.
        self._dead_letter_slots = asyncio.Semaphore(max_inflight_dead_letters)
        self._pending: set[asyncio.Task[None]] = set()
        self.failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def submit(self, raw: bytes | None, source: SourceRef, ack: Ack) -> None:
        """Take one input record; returns once it is queued (blocks while in-flight tokens are at the bound)."""
        self._metrics.posts_consumed.inc()
        try:
            routed = self._job(raw, source, ack)
        except Exception as error:
            # One record must never wedge its partition or crash the agent (FAUST_NOTES: a record the
            # agent raised on was committed without output): whatever raised, it is dead-lettered.
            log.exception("record %s:%d@%d raised before batching", source.topic, source.partition, source.offset)
            routed = Rejection(RejectReason.INTERNAL_ERROR, f"{error!r}"[:1000])
        if isinstance(routed, Rejection):
            await self._dead_letter_slots.acquire()
            self._metrics.dead_letters_inflight.inc()
            self._spawn(self._bounded_dead_letter(raw, routed.reason, routed.detail, source, ack))
            return
        lane, job = routed
        await lane.batcher.put(job)

    def _job(self, raw: bytes | None, source: SourceRef, ack: Ack) -> tuple[Lane, Job[Ticket]] | Rejection:
        ingested_at_ms = now_ms()
        result = self._validator.validate(raw, source)
        if isinstance(result, Rejection):
            return result
        defined = self._matcher.brand_names if self._matcher is not None else frozenset()
        hinted = self._hints.admit(result.brands, defined)
        if len(hinted) < len(result.brands):  # hints are distinct, so the difference is what was dropped
            self._metrics.brand_hints_dropped.inc(len(result.brands) - len(hinted))
            result = dataclasses.replace(result, brands=hinted)
        if self._matcher is not None:
            result = dataclasses.replace(result, brands=post_brands(result, self._matcher))
        text = result.post.text
        spans: list[BrandSpan] = []
        if self._brand_spans and len(result.brands) > 1:
            terms = self._matcher.brand_terms if self._matcher is not None else None
            spans = split_brands(text, result.brands, terms) or []
        ticket = Ticket(
            valid=result, raw=raw or b"", source=source, ingested_at_ms=ingested_at_ms, ack=ack, spans=tuple(spans)
        )
        extra = [span.text for span in spans]
        lane = route(self._lanes, result.language)
        tokens = sum(lane.batcher.estimate_tokens(t) for t in [text, *extra])
        return lane, Job(text=text, ticket=ticket, tokens=tokens, extra_texts=extra)

    @property
    def lanes(self) -> list[Lane]:
        return list(self._lanes)

    async def run(self) -> None:
        """Run every lane until cancelled."""
        await asyncio.gather(*(self._run_lane(lane) for lane in self._lanes))

    async def _run_lane(self, lane: Lane) -> None:
        """Prepare the lane's batches ahead and run them one at a time."""
        prepared: asyncio.Queue[Batch[Ticket]] = asyncio.Queue(maxsize=1)

        async def prepare() -> None:
            async for batch in lane.batcher.batches():
                await prepared.put(batch)

        preparer = asyncio.create_task(prepare(), name=f"socialpulse-prepare-{lane.name}")
        # Without this, a preparer that raised left run() waiting on an empty queue forever while the
        # worker looked healthy; failure stops the worker instead (PipelineService watches it).
        preparer.add_done_callback(self._stage_done)
        try:
            while True:
                batch = await prepared.get()
                predictions = await self._infer(lane, batch)
                self._spawn(self._complete(lane, batch, predictions))
        finally:
            preparer.cancel()

    async def drain(self, timeout: float) -> None:
        """Wait for queued and running batches to be delivered and acked (clean shutdown)."""
        deadline = time.monotonic() + timeout
        while (self.inflight_tokens or self._pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    @property
    def inflight_tokens(self) -> int:
        return sum(lane.batcher.inflight_tokens for lane in self._lanes)

    def close(self) -> None:
        for lane in self._lanes:
            lane.thread.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._settled)

    def _fail(self, reason: str) -> None:
        """Stop the worker (PipelineService watches `failure`); the first reason is the one reported."""
        if not self.failure.done():
            self.failure.set_exception(PipelineFailed(reason))

    def _stage_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            self._fail(f"batch preparer died: {error!r}")

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._fail(str(task.exception()))

    async def _run_backend(self, lane: Lane, batch: Batch[Ticket]) -> list[list[Prediction]]:
        """Per job: the post's prediction, then its extra texts' (the batch's rows regrouped by job)."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            rows = await loop.run_in_executor(
                lane.thread,
                predict,
                lane.backend,
                lane.manifest,
                batch.input_ids,
                batch.attention_mask,
                batch.texts,
            )
            posts, extras = rows[: len(batch.jobs)], iter(rows[len(batch.jobs) :])
            jobs = zip(batch.jobs, posts, strict=True)
            return [[post, *(next(extras) for _ in job.extra_texts)] for job, post in jobs]
        finally:
            elapsed = time.perf_counter() - started
            lane.busy_seconds += elapsed
            self._metrics.stage.labels("inference", lane.name).observe(elapsed)

    async def _infer(self, lane: Lane, batch: Batch[Ticket]) -> list[list[Prediction] | None]:
        metrics = self._metrics
        metrics.stage.labels("queue", lane.name).observe(batch.queue_seconds)
        metrics.stage.labels("tokenize", lane.name).observe(batch.tokenize_seconds)
        metrics.batch_size.labels(lane.name).observe(len(batch.jobs))
        metrics.batch_tokens.labels(lane.name).observe(batch.padded_tokens)
        metrics.padding_ratio.labels(lane.name).set(1.0 - batch.real_tokens / batch.padded_tokens)
        try:
            predictions: list[list[Prediction] | None] = list(await self._run_backend(lane, batch))
        except Exception:
            log.exception(
                "batch of %d failed in inference (%s); retrying its posts one by one", len(batch.jobs), lane.name
            )
        else:
            lane.known_good = (batch.input_ids[:1], batch.attention_mask[:1])
            return predictions
        results = [await self._infer_alone(lane, job) for job in batch.jobs]
        failed = [(job, r) for job, r in zip(batch.jobs, results, strict=True) if isinstance(r, BaseException)]
        if len(failed) == len(batch.jobs) and not await self._model_works(lane):
            # An outage (lost GPU, wrong model), not bad input: dead-lettering would divert the lane's languages.
            self._fail(
                f"inference on {lane.name} fails on input it ran before (last error: {failed[-1][1]!r}); "
                "stopping with the batch's posts uncommitted"
            )
            return [None] * len(batch.jobs)
        for job, error in failed:
            ticket = job.ticket
            self._spawn(
                self._dead_letter(ticket.raw, RejectReason.INFERENCE_FAILED, repr(error), ticket.source, ticket.ack)
            )
        return [None if isinstance(r, BaseException) else r for r in results]

    async def _infer_alone(self, lane: Lane, job: Job[Ticket]) -> list[Prediction] | BaseException:
        try:
            return (await self._run_backend(lane, lane.batcher.make_batch([job])))[0]
        except Exception as error:
            log.exception("post %s failed in inference", job.ticket.valid.post.id)
            return error

    async def _model_works(self, lane: Lane) -> bool:
        """Whether the lane's backend still runs what it ran before, trying `probe_attempts` times a second apart."""
        loop = asyncio.get_running_loop()
        for attempt in range(self._probe_attempts):
            if attempt:
                await asyncio.sleep(1.0)
            try:
                await loop.run_in_executor(lane.thread, lane.backend.run, *lane.known_good)
                return True
            except Exception:
                log.exception("inference probe %d of %d failed (%s)", attempt + 1, self._probe_attempts, lane.name)
        return False

    def _enrich(self, lane: Lane, job: Job[Ticket], predictions: list[Prediction]) -> Enriched:
        prediction, *span_predictions = predictions
        sentiment = prediction.heads[SENTIMENT_HEAD]
        behaviour = prediction.heads.get(BEHAVIOUR_HEAD)
        own = [Scored(p.heads[SENTIMENT_HEAD].labels[0], p.heads[SENTIMENT_HEAD].scores) for p in span_predictions]
        return Enriched(
            valid=job.ticket.valid,
            model=lane.model,
            ingested_at_ms=job.ticket.ingested_at_ms,
            sentiment=sentiment.labels[0],
            sentiment_scores=sentiment.scores,
            behaviours=behaviour.labels if behaviour else [],
            behaviour_scores=behaviour.scores if behaviour else {},
            embedding=prediction.embedding,
            truncated=job.truncated,
            brand_sentiments=brand_sentiments(job.ticket.spans, own) if own else {},
        )

    async def _complete(self, lane: Lane, batch: Batch[Ticket], predictions: list[list[Prediction] | None]) -> None:
        served = [(job, prediction) for job, prediction in zip(batch.jobs, predictions, strict=True) if prediction]
        enriched = [self._enrich(lane, job, prediction) for job, prediction in served]
        started = time.perf_counter()
        produced = await self._emitter.emit(enriched)
        self._metrics.stage.labels("produce", lane.name).observe(time.perf_counter() - started)
        for job, _ in served:
            await job.ticket.ack()
        lane.batcher.release(batch.charged_tokens)
        self._observe_delivered(enriched, produced)

    def _observe_delivered(self, enriched: list[Enriched], produced: dict[str, list[str]]) -> None:
        metrics = self._metrics
        delivered_ms = now_ms()
        metrics.posts_delivered.inc(len(enriched))
        # Labelled series are counted per batch first: a labels() lookup per post and series was a visible
        # share of the worker's time at a few thousand posts/s (py-spy).
        per_brand: Counter[tuple[str, str]] = Counter()
        for post in enriched:
            # A producer's clock may run ahead of ours; a negative latency is clamped, not recorded.
            metrics.e2e_created.observe(max(0.0, (delivered_ms - post.valid.created_at_ms) / 1000))
            metrics.e2e_ingest.observe((delivered_ms - post.ingested_at_ms) / 1000)
            for brand in post.valid.brands:
                per_brand[brand, post.sentiment_of(brand)] += 1
        brand_posts: Counter[str] = Counter()
        for (brand, sentiment), count in per_brand.items():
            brand_posts[brand] += count
            metrics.brand_sentiment.labels(brand, sentiment).inc(count)
        for brand, count in brand_posts.items():
            metrics.brand_posts.labels(brand).inc(count)
        for topic, labels in produced.items():
            for label, count in Counter(labels).items():
                metrics.events_produced.labels(topic, label).inc(count)
        if self._observer is not None:
            self._observer.record_batch(
                delivered_ms / 1000,
                posts=len(enriched),
                brands_sentiments=[(b, post.sentiment_of(b)) for post in enriched for b in post.valid.brands],
                languages=[post.valid.language for post in enriched],
            )

    async def _bounded_dead_letter(
        self, raw: bytes | None, reason: RejectReason, detail: str, source: SourceRef, ack: Ack
    ) -> None:
        try:
            await self._dead_letter(raw, reason, detail, source, ack)
        finally:
            self._dead_letter_slots.release()
            self._metrics.dead_letters_inflight.dec()

    async def _dead_letter(
        self, raw: bytes | None, reason: RejectReason, detail: str, source: SourceRef, ack: Ack
    ) -> None:
        await self._emitter.dead_letter(raw, reason, detail, source)
        await ack()
        self._metrics.dlq_records.labels(reason.value).inc()
