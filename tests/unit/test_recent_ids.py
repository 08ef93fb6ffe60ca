"""The sink's memory of lately stored ids: where each id was first taken on its partition, bounded per
partition, and a revoked partition or a refused row is never mistaken for a stored copy later."""

from __future__ import annotations

import pytest

from sinks.recent_ids import RecentIds
from sinks.rows import TABLE_FOR_SCHEMA

pytestmark = pytest.mark.unit

TP = ("events.web_visits", 0)
OTHER = ("events.web_visits", 1)


def test_an_id_is_known_on_its_own_partition_with_the_offset_of_its_first_copy() -> None:
    recent = RecentIds(10)
    assert recent.first_offset(TP, "e1") is None
    recent.first_or_take(TP, "e1", 5)
    recent.first_or_take(TP, "e1", 9)  # a later copy does not move it
    assert recent.first_offset(TP, "e1") == 5
    assert recent.first_offset(OTHER, "e1") is None
    assert len(recent) == 1


def test_the_oldest_id_of_a_partition_is_evicted_first_and_each_partition_has_its_own_bound() -> None:
    recent = RecentIds(3)
    for offset, record_id in enumerate(("a", "b", "c", "d")):
        recent.first_or_take(TP, record_id, offset)
    recent.first_or_take(OTHER, "x", 0)
    assert len(recent) == 4  # 3 kept on TP, 1 on OTHER
    assert [recent.first_offset(TP, i) for i in "abcd"] == [None, 1, 2, 3]


def test_a_later_copy_does_not_refresh_an_ids_place_in_the_eviction_order() -> None:
    """Eviction is by first sight: a burst of re-sends of one id must not keep it while newer ids go."""
    recent = RecentIds(2)
    recent.first_or_take(TP, "a", 0)
    recent.first_or_take(TP, "b", 1)
    recent.first_or_take(TP, "a", 2)
    recent.first_or_take(TP, "c", 3)  # evicts "a", the oldest first seen
    assert recent.first_offset(TP, "a") is None and recent.first_offset(TP, "b") == 1


def test_a_revoked_partition_is_forgotten_so_its_re_read_records_are_stored() -> None:
    recent = RecentIds(10)
    recent.first_or_take(TP, "e1", 0)
    recent.first_or_take(OTHER, "e2", 0)
    recent.drop_partition(TP)
    assert recent.first_offset(TP, "e1") is None and recent.first_offset(OTHER, "e2") == 0


def test_only_the_refused_copy_is_forgotten() -> None:
    recent = RecentIds(10)
    recent.first_or_take(TP, "e1", 4)
    recent.forget(TP, "e1", 7)  # another copy was refused: the stored first one stays known
    assert recent.first_offset(TP, "e1") == 4
    recent.forget(TP, "e1", 4)
    recent.forget(OTHER, "never-seen", 0)  # no error for an unknown partition or id
    assert recent.first_offset(TP, "e1") is None


def test_capacity_zero_turns_the_memory_off() -> None:
    recent = RecentIds(0)
    recent.first_or_take(TP, "e1", 0)
    assert recent.first_offset(TP, "e1") is None and len(recent) == 0


def test_only_tables_whose_first_column_is_a_record_id_are_deduplicated() -> None:
    keyed = {spec.table: (spec.keyed_by_id, spec.columns[0]) for spec in TABLE_FOR_SCHEMA.values()}
    assert keyed == {
        "events": (True, "event_id"),
        "leads": (True, "event_id"),
        "sales_activities": (True, "event_id"),
        "stage_transitions": (True, "transition_id"),
        "sla_events": (True, "timeout_id"),
        "hot_leads": (True, "notification_id"),
        "lead_scores": (False, "lead_id"),
        "account_scores": (False, "domain"),
    }


def test_first_or_take_answers_where_the_first_copy_was_taken() -> None:
    """What the sink decides a re-send by: None for a new id (now remembered), else its first copy's offset;
    eviction by first sight; a memory of 0 ids remembers nothing."""
    recent = RecentIds(2)
    assert recent.first_or_take(TP, "a", 0) is None
    assert recent.first_or_take(TP, "a", 5) == 0  # a later copy: the first one's offset, not moved
    assert recent.first_or_take(TP, "b", 1) is None
    assert recent.first_or_take(TP, "c", 2) is None  # evicts "a"
    assert recent.first_or_take(TP, "a", 3) is None
    assert [recent.first_offset(TP, i) for i in "abc"] == [3, None, 2]
    disabled = RecentIds(0)
    assert disabled.first_or_take(TP, "a", 0) is None and disabled.first_or_take(TP, "a", 1) is None
    assert len(disabled) == 0
