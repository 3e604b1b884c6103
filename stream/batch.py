"""Batching stage: token-budget micro-batches, tokenized once per window, sorted by length to cut padding.

A window is everything queued when a batch is due (up to `sort_window` posts). It is tokenized with one
`encode_batch` call (a post's extra texts too: the per-brand spans of a multi-brand post, which run as extra
rows of the post's batch), sorted by length and sliced into batches whose padded cost (n x padded length) stays
under `max_batch_tokens`. A batch is due when the queue holds a full batch or the oldest post has waited
`max_wait_ms`. Queued plus running tokens are bounded by one `TokenBudget` that every lane's batcher
charges: `put` blocks above `max_inflight_tokens` in all, which stops the agent pulling records, so Faust
pauses the partitions instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from stream.tokenize import PostTokenizer, pad, padded_length

Ticket = TypeVar("Ticket")


def slice_by_budget(
    lengths: Sequence[int], max_tokens: int, max_size: int, multiple: int, rows: Sequence[int] | None = None
) -> list[range]:
    """Cut length-sorted items into consecutive batches whose padded cost stays within budget.

    `rows`: the rows each item takes (a post and its extra texts; 1 each when None), no longer than its
    length. A single item over the budget still forms a batch of one: it must be served, not starved.
    """
    batches: list[range] = []
    start = 0
    for index in range(len(lengths)):
        size = index - start + 1 if rows is None else sum(rows[start : index + 1])
        cost = size * padded_length(max(lengths[start : index + 1]), multiple)
        if index > start and (size > max_size or cost > max_tokens):
            batches.append(range(start, index))
            start = index
    if start < len(lengths):
        batches.append(range(start, len(lengths)))
    return batches


class TokenBudget:
    """Tokens queued or running, bounded across the batchers that share it (one per lane): with a budget per
    lane, a worker serving two models held twice the tokens `max_inflight_tokens` promised."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.inflight = 0
        # First come, first served: a large job is not overtaken for ever by small ones.
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, tokens: int) -> bool:
        # A lone job larger than the bound is let through, or it would wait forever.
        return self.inflight == 0 or self.inflight + tokens <= self.max_tokens

    async def acquire(self, tokens: int) -> None:
        if not self._waiting and self._fits(tokens):
            self.inflight += tokens
            return
        granted = asyncio.get_running_loop().create_future()
        entry = (tokens, granted)
        self._waiting.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.cancelled():
                self._waiting.remove(entry)
            else:  # granted, then cancelled before the waiter ran: give the tokens back
                self.change(-tokens)
            raise

    def change(self, tokens: int) -> None:
        """Charge (positive) or free (negative) tokens; waiters that now fit are let in, in order."""
        self.inflight += tokens
        while self._waiting and self._fits(self._waiting[0][0]):
            waiting, granted = self._waiting.popleft()
            self.inflight += waiting
            granted.set_result(None)


@dataclass(slots=True)
class Job(Generic[Ticket]):
    """One valid post on its way through inference; the ticket travels with it to emit and ack."""

    text: str
    ticket: Ticket
    # Estimate until tokenized, then the real count; what the in-flight bound is charged.
    tokens: int
    enqueued_at: float = field(default_factory=time.monotonic)
    ids: list[int] = field(default_factory=list)
    truncated: bool = False
    # More texts classified with the post (each brand's span of a multi-brand post), as extra rows of its batch.
    extra_texts: Sequence[str] = ()
    extra_ids: list[list[int]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return 1 + len(self.extra_texts)


@dataclass(slots=True)
class Batch(Generic[Ticket]):
    # Rows: one per job in order, then every job's extra texts in job order (`texts`).
    jobs: list[Job[Ticket]]
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    # Oldest job's wait from enqueue until the batch was cut.
    queue_seconds: float
    # Tokenizing the window this batch came from, shared by its batches.
    tokenize_seconds: float

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def charged_tokens(self) -> int:
        return sum(job.tokens for job in self.jobs)

    @property
    def texts(self) -> list[str]:
        """The text of each row."""
        return [job.text for job in self.jobs] + [text for job in self.jobs for text in job.extra_texts]


class Batcher(Generic[Ticket]):
    """Owns the queue; `put` from the ingest side, `batches()` from the inference side."""

    def __init__(
        self,
        tokenizer: PostTokenizer,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_ms: float,
        sort_window: int,
        pad_multiple: int,
        budget: TokenBudget,
    ) -> None:
        self._tokenizer = tokenizer
        self._max_batch_tokens = max_batch_tokens
        self._max_batch_size = max_batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._sort_window = sort_window
        self._pad_multiple = pad_multiple
        self._budget = budget
        self._queue: deque[Job[Ticket]] = deque()
        self._queued_tokens = 0
        # This batcher's share of the budget (queued and running here).
        self.inflight_tokens = 0
        self._changed = asyncio.Condition()

    def estimate_tokens(self, text: str) -> int:
        # About four characters a token for English posts, plus the special tokens.
        return min(self._tokenizer.max_seq_len, len(text) // 4 + 2)

    async def put(self, job: Job[Ticket]) -> None:
        await self._budget.acquire(job.tokens)
        async with self._changed:
            self._queue.append(job)
            self._queued_tokens += job.tokens
            self.inflight_tokens += job.tokens
            self._changed.notify_all()

    def release(self, tokens: int) -> None:
        """Called once a batch's outputs are acknowledged, freeing room for new posts."""
        self.inflight_tokens -= tokens
        self._budget.change(-tokens)

    def _full_batch_queued(self) -> bool:
        return len(self._queue) >= self._max_batch_size or self._queued_tokens >= self._max_batch_tokens

    async def _next_window(self) -> list[Job[Ticket]]:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._queue))
            deadline = self._queue[0].enqueued_at + self._max_wait
            while not self._full_batch_queued():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=remaining)
                except TimeoutError:
                    break
            window = [self._queue.popleft() for _ in range(min(self._sort_window, len(self._queue)))]
            self._queued_tokens -= sum(job.tokens for job in window)
            return window

    async def _tokenize(self, window: list[Job[Ticket]]) -> float:
        started = time.perf_counter()
        texts = [job.text for job in window] + [text for job in window for text in job.extra_texts]
        encoded = await asyncio.to_thread(self._tokenizer.encode, texts)
        elapsed = time.perf_counter() - started
        correction = 0
        extras = iter(encoded[len(window) :])
        for job, (ids, truncated) in zip(window, encoded[: len(window)], strict=True):
            job.extra_ids = [next(extras)[0] for _ in job.extra_texts]
            tokens = len(ids) + sum(len(extra) for extra in job.extra_ids)
            correction += tokens - job.tokens
            job.ids, job.truncated, job.tokens = ids, truncated, tokens
        self.inflight_tokens += correction
        self._budget.change(correction)
        return elapsed

    async def batches(self) -> AsyncIterator[Batch[Ticket]]:
        """Endless stream of batches; the consumer's pace sets how far ahead windows are prepared."""
        while True:
            window = await self._next_window()
            tokenize_seconds = await self._tokenize(window)
            window.sort(key=lambda job: len(job.ids))
            lengths = [len(job.ids) for job in window]
            rows = [job.rows for job in window]
            budget = (self._max_batch_tokens, self._max_batch_size, self._pad_multiple)
            for span in slice_by_budget(lengths, *budget, rows=rows):
                yield self.make_batch(window[span.start : span.stop], tokenize_seconds)

    def make_batch(self, jobs: list[Job[Ticket]], tokenize_seconds: float = 0.0) -> Batch[Ticket]:
        """Pad tokenized jobs into one batch (their extra rows after them)."""
        sequences = [job.ids for job in jobs] + [ids for job in jobs for ids in job.extra_ids]
        input_ids, attention_mask = pad(sequences, self._pad_multiple, self._tokenizer.pad_token_id)
        return Batch(
            jobs=jobs,
            input_ids=input_ids,
            attention_mask=attention_mask,
            queue_seconds=time.monotonic() - min(job.enqueued_at for job in jobs),
            tokenize_seconds=tokenize_seconds,
        )
