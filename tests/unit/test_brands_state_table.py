"""The brand agent's write-behind table: reads see every write at once; the Faust table and its changelog
get the last value of each key, in the partition of the record that wrote it, when a commit flushes them
(`flush`: stage, then send, as the agent does once the records' outputs are acknowledged).

The integration tests run the same table on Faust and Kafka (kill and restart mid-window, commits)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest import mock

import msgspec
import pytest

from stream.brands.agent import CommitFlush, StructTable
from stream.brands.model import AuthorState


class ChangeloggedTable(dict[bytes, bytes]):
    """The part of a Faust table StructTable uses: the store (`data`) and `send_changelog`."""

    def __init__(self, stored: dict[bytes, bytes] | None = None) -> None:
        super().__init__(stored or {})
        self.changelog: list[tuple[int, bytes, bytes | None]] = []

    @property
    def data(self) -> dict[bytes, bytes]:
        return self

    def send_changelog(self, partition: int, key: bytes, value: bytes | None, **_: Any) -> tuple[int, bytes]:
        self.changelog.append((partition, key, value))
        return (partition, key)  # stands for the delivery Faust returns


@contextmanager
def handling(partition: int) -> Iterator[None]:
    """As if the agent were handling a record of `partition` (what Faust's current_event() says)."""
    event = SimpleNamespace(message=SimpleNamespace(partition=partition))
    with mock.patch("stream.brands.agent.faust.current_event", return_value=event):
        yield


def flush(table: StructTable[AuthorState]) -> list[Any]:
    return table.send(table.stage())


def author(level: str) -> AuthorState:
    return AuthorState(level=level)


def encoded(level: str) -> bytes:
    return msgspec.json.encode(author(level))


def test_writes_wait_for_the_flush_and_go_to_their_records_partition() -> None:
    backing = ChangeloggedTable()
    table = StructTable(backing, AuthorState)
    with handling(0):
        table["a"] = author("complaining")
    with handling(1):
        table["b"] = author("churn_risk")
    assert table["a"] == author("complaining") and table["b"] == author("churn_risk")
    assert backing == {} and backing.changelog == []

    flush(table)
    assert backing == {b"a": encoded("complaining"), b"b": encoded("churn_risk")}
    assert sorted(backing.changelog) == [(0, b"a", encoded("complaining")), (1, b"b", encoded("churn_risk"))]
    assert table["a"] == author("complaining")
    flush(table)
    assert len(backing.changelog) == 2, "nothing waits after a flush"


def test_only_the_last_write_of_a_key_reaches_the_changelog() -> None:
    backing = ChangeloggedTable()
    table = StructTable(backing, AuthorState)
    with handling(2):
        for level in ("none", "complaining", "churn_risk"):
            table["a"] = author(level)
    flush(table)
    assert backing.changelog == [(2, b"a", encoded("churn_risk"))]


def test_deletes_wait_for_the_flush_too() -> None:
    backing = ChangeloggedTable({b"gone": encoded("complaining")})
    table = StructTable(backing, AuthorState)
    with handling(3):
        del table["gone"]
        table["never-stored"] = author("none")
        del table["never-stored"]
        assert "gone" not in table and "never-stored" not in table
        assert list(table) == [] and len(table) == 0
        with pytest.raises(KeyError):
            del table["gone"]
    assert b"gone" in backing
    flush(table)
    assert backing == {}
    assert sorted(backing.changelog) == [(3, b"gone", None), (3, b"never-stored", None)]


def test_iteration_merges_the_table_and_the_waiting_writes() -> None:
    backing = ChangeloggedTable({b"kept": encoded("none"), b"dropped": encoded("none")})
    table = StructTable(backing, AuthorState)
    with handling(0):
        table["new"] = author("none")
        del table["dropped"]
    assert list(table) == ["kept", "new"]
    assert len(table) == 2


def test_a_lost_partitions_waiting_writes_are_discarded() -> None:
    backing = ChangeloggedTable({b"a": encoded("none")})
    table = StructTable(backing, AuthorState)
    with handling(0):
        table["a"] = author("churn_risk")
    with handling(1):
        table["b"] = author("complaining")
    table.discard({0})
    assert table["a"] == author("none"), "the restored value, not the lost partition's unflushed one"
    flush(table)
    assert backing.changelog == [(1, b"b", encoded("complaining"))]


def test_a_discard_also_forgets_changes_made_in_place_to_what_was_read() -> None:
    # The monitor changes the struct a read returns, then writes it back; a record that fails in between
    # leaves only the in-place change, which a rollback must not keep.
    backing = ChangeloggedTable({b"a": encoded("none")})
    table = StructTable(backing, AuthorState)
    table["a"].level = "churn_risk"
    table.discard({0})
    assert table["a"] == author("none")


def test_a_flush_returns_one_delivery_per_changelog_write() -> None:
    backing = ChangeloggedTable()
    table = StructTable(backing, AuthorState)
    with handling(2):
        table["a"] = author("none")
        table["b"] = author("none")
        table["a"] = author("complaining")
    assert sorted(flush(table)) == [(2, b"a"), (2, b"b")]  # type: ignore[type-var]
    assert flush(table) == []


def test_a_write_outside_a_record_is_refused() -> None:
    table = StructTable(ChangeloggedTable(), AuthorState)
    with pytest.raises(RuntimeError, match="handles a record"):
        table["a"] = author("none")


def test_a_commit_flushes_every_table() -> None:
    first, second = ChangeloggedTable(), ChangeloggedTable()
    tables = [StructTable(first, AuthorState), StructTable(second, AuthorState)]
    with handling(0):
        tables[0]["a"] = author("none")
        tables[1]["b"] = author("none")

    def flush_all() -> None:
        for table in tables:
            flush(table)

    CommitFlush(flush_all).on_commit_initiated(consumer=None)
    assert first.changelog == [(0, b"a", encoded("none"))]
    assert second.changelog == [(0, b"b", encoded("none"))]
