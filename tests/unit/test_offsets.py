"""The commit rule: only the longest prefix of done records, per partition, in delivery order."""

from __future__ import annotations

import logging

import pytest
from faust.types import TP

from stream.ingest import OffsetSequencer

P0 = TP("posts", 0)
P1 = TP("posts", 1)


def test_out_of_order_completion_never_skips_a_pending_record() -> None:
    sequencer = OffsetSequencer()
    done = {offset: sequencer.track(P0, offset) for offset in range(10, 15)}
    for offset in (14, 12, 11):
        done[offset]()
    # 10 is still in flight: faust's rule would have committed past it (gap of one).
    assert sequencer.committable(P0) is None
    done[10]()
    assert sequencer.committable(P0) == 13
    done[13]()
    assert sequencer.committable(P0) == 15


def test_first_commit_starts_at_the_first_delivered_record() -> None:
    sequencer = OffsetSequencer()
    first = sequencer.track(P0, 0)
    later = [sequencer.track(P0, offset) for offset in range(1, 50)]
    for done in later:
        done()
    assert sequencer.committable(P0) is None, "no commit while offset 0 is pending, even with no commit yet"
    first()
    assert sequencer.committable(P0) == 50


def test_partitions_are_independent_and_holes_in_offsets_are_fine() -> None:
    sequencer = OffsetSequencer()
    a = sequencer.track(P0, 5)
    b = sequencer.track(P1, 100)
    c = sequencer.track(P0, 9)  # offsets 6-8 never delivered (e.g. transaction markers)
    b()
    c()
    assert sequencer.committable(P1) == 101
    assert sequencer.committable(P0) is None
    a()
    assert sequencer.committable(P0) == 10


def test_rewind_discards_stale_in_flight_records() -> None:
    sequencer = OffsetSequencer()
    stale = [sequencer.track(P0, offset) for offset in (20, 21, 22)]
    # Rebalance: seek back to the committed offset 20; the same records arrive again.
    fresh = [sequencer.track(P0, offset) for offset in (20, 21, 22)]
    stale[2]()
    stale[0]()
    stale[1]()
    assert sequencer.committable(P0) is None, "completions from before the rewind must not move commits"
    for done in fresh:
        done()
    assert sequencer.committable(P0) == 23


def test_forget_on_revoke() -> None:
    sequencer = OffsetSequencer()
    done = sequencer.track(P0, 3)
    sequencer.forget({P0})
    done()
    assert sequencer.committable(P0) is None


def test_offsets_never_delivered_between_two_tracked_records_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    sequencer = OffsetSequencer()
    for offset in (3, 4):
        sequencer.track(P0, offset)()
    with caplog.at_level(logging.WARNING, logger="stream.ingest"):
        sequencer.track(P0, 7)
        sequencer.track(P1, 9)  # the first record seen on a partition is no gap
        sequencer.track(P0, 8)
    assert [r.getMessage() for r in caplog.records] == ["posts[0]: offsets 5-6 were not delivered to the agent"]


def test_a_gap_is_fetched_again_and_nothing_after_it_is_handled_first() -> None:
    # Faust dropped mentions it had never delivered (a seek while earlier records were still being
    # delivered); the next ones were committed and applied around the hole, and the brand state then took
    # the dropped ones, fetched again after a restart, as applied (CI, stops 18-20).
    sequencer, asked = OffsetSequencer(), []
    sequencer.refetch = lambda tp, offset: asked.append((tp, offset))
    for offset in (3, 4):
        sequencer.track(P0, offset)()
    assert sequencer.track(P0, 7) is None
    assert asked == [(P0, 5)]
    assert sequencer.track(P0, 8) is None, "records after the hole wait for it"
    assert sequencer.committable(P0) == 5
    for offset in (5, 6, 7, 8):
        done = sequencer.track(P0, offset)
        assert done is not None
        done()
    assert sequencer.committable(P0) == 9
    assert asked == [(P0, 5)]


@pytest.mark.parametrize(("topic", "level"), [("mentions", logging.ERROR), ("posts", logging.WARNING)])
def test_a_hole_the_broker_really_has_is_taken_once_the_new_fetch_shows_it(
    caplog: pytest.LogCaptureFixture, topic: str, level: int
) -> None:
    # Transaction markers leave holes in an input topic; in the mentions topic (our producers only) a hole
    # is records lost, said as an error.
    sequencer = OffsetSequencer()
    sequencer.govern("mentions", gap_free=True)
    sequencer.govern("posts")
    sequencer.refetch = lambda tp, offset: None
    tp = TP(topic, 0)
    sequencer.track(tp, 3)()
    assert sequencer.track(tp, 6) is None
    sequencer.resumes_at(tp, 6)
    assert sequencer.track(tp, 7) is None, "a record from before the new fetch"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stream.ingest"):
        done = sequencer.track(tp, 6)
    assert done is not None
    done()
    assert sequencer.committable(tp) == 7
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (level, f"{topic}[0]: the broker holds no records at 4-5")
    ]
