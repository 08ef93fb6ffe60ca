"""The sink's memory of lately stored ids: a re-send on the same partition is caught, the memory is bounded
per partition, and a revoked partition or a refused row is never mistaken for a duplicate later."""

from __future__ import annotations

import pytest

from sinks.recent_ids import RecentIds
from sinks.rows import TABLE_FOR_SCHEMA

pytestmark = pytest.mark.unit

TP = ("events.web_visits", 0)
OTHER = ("events.web_visits", 1)


def test_an_id_seen_on_the_same_partition_is_a_repeat_and_on_another_is_not() -> None:
    recent = RecentIds(10)
    assert recent.repeat(TP, "e1") is False
    assert recent.repeat(TP, "e1") is True
    assert recent.repeat(TP, "e1") is True
    assert recent.repeat(OTHER, "e1") is False
    assert len(recent) == 2


def test_the_oldest_id_of_a_partition_is_evicted_first_and_each_partition_has_its_own_bound() -> None:
    recent = RecentIds(3)
    for record_id in ("a", "b", "c", "d"):
        assert recent.repeat(TP, record_id) is False
    assert recent.repeat(OTHER, "x") is False
    assert len(recent) == 4  # 3 kept on TP, 1 on OTHER
    assert recent.repeat(TP, "a") is False  # evicted, so taken again (and "b" evicted in turn)
    assert recent.repeat(TP, "c") is True
    assert recent.repeat(TP, "d") is True
    assert recent.repeat(TP, "b") is False


def test_a_repeat_does_not_refresh_an_ids_place_in_the_eviction_order() -> None:
    """Eviction is by first sight: a burst of re-sends of one id must not keep it while newer ids go."""
    recent = RecentIds(2)
    recent.repeat(TP, "a")
    recent.repeat(TP, "b")
    assert recent.repeat(TP, "a") is True
    recent.repeat(TP, "c")  # evicts "a", the oldest first seen
    assert recent.repeat(TP, "b") is True
    assert recent.repeat(TP, "a") is False


def test_a_revoked_partition_is_forgotten_so_its_re_read_records_are_stored() -> None:
    recent = RecentIds(10)
    recent.repeat(TP, "e1")
    recent.repeat(OTHER, "e2")
    recent.drop_partition(TP)
    assert recent.repeat(TP, "e1") is False
    assert recent.repeat(OTHER, "e2") is True


def test_a_refused_row_is_forgotten_so_a_corrected_re_send_is_stored() -> None:
    recent = RecentIds(10)
    recent.repeat(TP, "e1")
    recent.forget(TP, "e1")
    recent.forget(OTHER, "never-seen")  # no error for an unknown partition or id
    assert recent.repeat(TP, "e1") is False


def test_capacity_zero_turns_the_memory_off() -> None:
    recent = RecentIds(0)
    assert recent.repeat(TP, "e1") is False
    assert recent.repeat(TP, "e1") is False
    assert len(recent) == 0


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
