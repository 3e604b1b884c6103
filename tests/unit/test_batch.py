"""Token-budget batching: budgets hold, padding is cut by sorting, waits are bounded, backpressure blocks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from stream.batch import Batch, Batcher, Job, TokenBudget, slice_by_budget
from stream.tokenize import PostTokenizer, pad, padded_length

WORDS = [f"w{i}" for i in range(200)]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{word: i + 4 for i, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def text_of(words: int) -> str:
    return " ".join(WORDS[:words])


def make_batcher(tokenizer_file: Path, budget: TokenBudget | None = None, **overrides: float) -> Batcher[int]:
    """A batcher with its own budget of `max_inflight_tokens`, or charging `budget` (shared with other lanes)."""
    options: dict[str, float] = {
        "max_batch_tokens": 256,
        "max_batch_size": 8,
        "max_wait_ms": 30,
        "sort_window": 64,
        "pad_multiple": 8,
        "max_inflight_tokens": 100_000,
    }
    options.update(overrides)
    budget = budget or TokenBudget(int(options["max_inflight_tokens"]))
    del options["max_inflight_tokens"]
    return Batcher(PostTokenizer(tokenizer_file, max_seq_len=64, pad_token_id=0), budget=budget, **options)  # type: ignore[arg-type]


def test_padded_length_rounds_up_to_multiple() -> None:
    assert [padded_length(n, 8) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]


def test_slices_respect_token_budget_and_size() -> None:
    lengths = sorted([5, 7, 9, 12, 30, 31, 33, 60, 61, 62, 64, 64])
    spans = slice_by_budget(lengths, max_tokens=128, max_size=3, multiple=8)
    assert [i for span in spans for i in span] == list(range(len(lengths)))
    for span in spans:
        size = len(span)
        assert size <= 3
        assert size == 1 or size * padded_length(max(lengths[span.start : span.stop]), 8) <= 128


def test_item_over_budget_forms_its_own_batch() -> None:
    assert slice_by_budget([4, 500], max_tokens=64, max_size=8, multiple=8) == [range(0, 1), range(1, 2)]


def test_pad_builds_mask_and_multiple_width() -> None:
    ids, mask = pad([[5, 6, 7], [5]], multiple=8, pad_id=0)
    assert ids.shape == (2, 8) and mask.shape == (2, 8)
    assert ids[0, :3].tolist() == [5, 6, 7] and ids[0, 3:].sum() == 0
    assert mask.sum(axis=1).tolist() == [3, 1]


def test_truncation_is_reported(tokenizer_file: Path) -> None:
    encoded = PostTokenizer(tokenizer_file, max_seq_len=16, pad_token_id=0).encode([text_of(3), text_of(40)])
    assert [len(ids) for ids, _ in encoded] == [5, 16]
    assert [truncated for _, truncated in encoded] == [False, True]


async def collect(batcher: Batcher[int], count: int) -> list[Batch[int]]:
    batches: list[Batch[int]] = []
    seen = 0
    async for batch in batcher.batches():
        batches.append(batch)
        seen += len(batch.jobs)
        if seen >= count:
            return batches
    return batches


async def test_window_sorted_by_length_cuts_padding(tokenizer_file: Path) -> None:
    batcher = make_batcher(tokenizer_file, max_batch_size=4, max_batch_tokens=10_000)
    lengths = [40, 2, 38, 3, 41, 1, 39, 2]
    for ticket, words in enumerate(lengths):
        await batcher.put(Job(text=text_of(words), ticket=ticket, tokens=words + 2))
    batches = await collect(batcher, len(lengths))
    assert sorted(job.ticket for batch in batches for job in batch.jobs) == list(range(len(lengths)))
    # Short posts travel together and long posts together: two batches, little padding.
    assert [sorted(job.ticket for job in batch.jobs) for batch in batches] == [[1, 3, 5, 7], [0, 2, 4, 6]]
    assert batches[0].input_ids.shape[1] == 8
    # Arrival order would pad both batches to 48 (384 tokens); sorted, the short batch pads to 8.
    assert sum(batch.padded_tokens for batch in batches) == 4 * 8 + 4 * 48


async def test_partial_batch_waits_no_longer_than_max_wait(tokenizer_file: Path) -> None:
    batcher = make_batcher(tokenizer_file, max_wait_ms=50)
    started = time.monotonic()
    await batcher.put(Job(text=text_of(3), ticket=1, tokens=5))
    (batch,) = await asyncio.wait_for(collect(batcher, 1), timeout=2)
    waited = time.monotonic() - started
    assert len(batch.jobs) == 1
    assert 0.04 <= waited < 1.0
    assert batch.queue_seconds >= 0.04


async def test_full_batch_is_cut_without_waiting(tokenizer_file: Path) -> None:
    batcher = make_batcher(tokenizer_file, max_wait_ms=5_000, max_batch_size=4)
    for ticket in range(4):
        await batcher.put(Job(text=text_of(3), ticket=ticket, tokens=5))
    started = time.monotonic()
    batches = await asyncio.wait_for(collect(batcher, 4), timeout=2)
    assert time.monotonic() - started < 1.0
    assert len(batches[0].jobs) == 4


@pytest.mark.parametrize("lanes", [1, 2])
async def test_put_blocks_at_inflight_bound_until_release(tokenizer_file: Path, lanes: int) -> None:
    # Two lanes share one budget: the second must not take tokens the first holds.
    budget = TokenBudget(12)
    batchers = [make_batcher(tokenizer_file, budget) for _ in range(lanes)]
    first, last = batchers[0], batchers[-1]
    await first.put(Job(text=text_of(4), ticket=1, tokens=6))
    await last.put(Job(text=text_of(4), ticket=2, tokens=6))
    third = asyncio.create_task(last.put(Job(text=text_of(4), ticket=3, tokens=6)))
    await asyncio.sleep(0.05)
    assert not third.done(), "a put over the in-flight bound must wait (backpressure), not buffer"
    first.release(6)
    await asyncio.wait_for(third, timeout=1)
    assert [batcher.inflight_tokens for batcher in batchers] == ([12] if lanes == 1 else [0, 12])
    assert budget.inflight == 12


async def test_budget_waiters_go_in_order_and_a_cancelled_one_holds_nothing() -> None:
    budget = TokenBudget(10)
    await budget.acquire(10)
    large = asyncio.create_task(budget.acquire(8))
    small = asyncio.create_task(budget.acquire(2))
    cancelled = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    budget.change(-5)
    await asyncio.sleep(0.01)
    assert not large.done() and not small.done(), "a smaller job must not overtake a waiting larger one"
    budget.change(-5)
    await asyncio.wait_for(asyncio.gather(large, small), timeout=1)
    assert budget.inflight == 10
    # Granted and cancelled before it ran: the tokens go back.
    budget.change(-10)
    await budget.acquire(10)
    granted_late = asyncio.create_task(budget.acquire(3))
    await asyncio.sleep(0.01)
    budget.change(-10)
    granted_late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await granted_late
    assert budget.inflight == 0


def test_rows_count_toward_batch_size() -> None:
    # Three posts, the second with two extra rows: four rows fit a batch of size 4, five do not.
    assert slice_by_budget([5, 5, 5], max_tokens=1_000, max_size=4, multiple=8, rows=[1, 3, 1]) == [
        range(0, 2),
        range(2, 3),
    ]


async def test_extra_texts_run_as_rows_after_the_jobs(tokenizer_file: Path) -> None:
    batcher = make_batcher(tokenizer_file)
    await batcher.put(Job(text=text_of(6), ticket=0, tokens=8, extra_texts=[text_of(2), text_of(3)]))
    await batcher.put(Job(text=text_of(4), ticket=1, tokens=6))
    (batch,) = await collect(batcher, 2)
    assert [job.ticket for job in batch.jobs] == [1, 0]
    assert batch.texts == [text_of(4), text_of(6), text_of(2), text_of(3)]
    assert batch.attention_mask.sum(axis=1).tolist() == [6, 8, 4, 5]
    # The in-flight bound is charged for the extra rows too.
    assert batch.charged_tokens == batcher.inflight_tokens == 6 + 8 + 4 + 5
