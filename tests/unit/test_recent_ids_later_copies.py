"""The sink's memory of lately stored ids when a copy is taken while an earlier one still waits unwritten:
both are stored, and refusing either leaves the id remembered at the other, so a further re-send is known."""

from __future__ import annotations

import pytest

from sinks.recent_ids import RecentIds

pytestmark = pytest.mark.unit

TP = ("events.content_views", 0)


def _taken_twice(capacity: int = 10) -> RecentIds:
    """``e1`` taken at offset 4, and again at 7 while the copy at 4 waited in its batch."""
    recent = RecentIds(capacity)
    recent.first_or_take(TP, "e1", 4)
    recent.also_taken(TP, "e1", 7)
    return recent


def test_a_refused_first_copy_leaves_the_id_remembered_at_the_copy_taken_after_it() -> None:
    recent = _taken_twice()
    recent.forget(TP, "e1", 4)
    assert recent.first_offset(TP, "e1") == 7
    recent.forget(TP, "e1", 7)  # that one refused too: nothing of the id is stored
    assert recent.first_offset(TP, "e1") is None


def test_a_refused_later_copy_leaves_the_id_remembered_at_the_first() -> None:
    recent = _taken_twice()
    recent.forget(TP, "e1", 7)
    recent.forget(TP, "e1", 4)
    assert recent.first_offset(TP, "e1") is None  # the later copy no longer stands in


def test_later_copies_go_with_their_id_when_it_is_evicted_or_its_partition_revoked() -> None:
    recent = _taken_twice(capacity=1)
    recent.first_or_take(TP, "e2", 8)  # evicts e1
    recent.first_or_take(TP, "e1", 9)  # taken anew: a copy at 4 or 7 no longer stands for it
    recent.forget(TP, "e1", 9)
    assert recent.first_offset(TP, "e1") is None
    revoked = _taken_twice()
    revoked.drop_partition(TP)
    revoked.first_or_take(TP, "e1", 11)
    revoked.forget(TP, "e1", 11)
    assert revoked.first_offset(TP, "e1") is None


def test_a_refused_first_copy_leaves_the_id_at_a_copy_known_stored_before_one_still_waiting() -> None:
    """After a restart, copies of ``e1`` taken again from gaps at 4 and 6 wait unwritten; the record at 8,
    skipped as stored, is remembered beside them as stored (-1, ``record_intake.STORED``). Refusing the copy
    at 4 must leave the id at the stored one: at 6 it would still count as possibly refused, and a further
    copy would be stored beside the stored row."""
    recent = RecentIds(10)
    recent.first_or_take(TP, "e1", 4)
    recent.also_taken(TP, "e1", 6)
    recent.also_taken(TP, "e1", -1)
    recent.forget(TP, "e1", 4)
    assert recent.first_offset(TP, "e1") == -1
    recent.forget(TP, "e1", 6)
    assert recent.first_offset(TP, "e1") == -1
