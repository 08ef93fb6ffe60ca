"""The notifier's per-target progress records (agents/notifier_progress.py) and the bookkeeping behind them
(agents/notifier_group.PendingOffsets): what a restarted notifier may skip, per target."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from agents import notifier_progress
from agents.notifications import Notifier
from agents.notifier_group import PendingOffsets
from agents.notifier_progress import (
    ALL,
    MAX_OFFSETS,
    MAX_RECORD_BYTES,
    WRITE_INTERVAL_S,
    ProgressLog,
    applicable,
    decode,
    encode,
    target_keys,
    to_ranges,
)
from sinks.webhook import WebhookTarget
from streams.settings import load_settings

pytestmark = pytest.mark.unit
TP = TopicPartition("leads.hot", 3)


def test_offsets_are_kept_as_runs_and_read_back() -> None:
    assert to_ranges([7, 3, 4, 5, 9, 4]) == [[3, 5], [7, 7], [9, 9]]
    value = encode(3, {"a": {3, 4, 5, 9}, "b": set()})
    assert value == b'{"v":1,"base":3,"done":{"a":[[3,5],[9,9]]}}'
    assert decode(value) == (3, {"a": {3, 4, 5, 9}})


def test_a_record_too_large_is_not_encoded_and_garbage_is_not_decoded() -> None:
    scattered = set(range(0, 4 * MAX_RECORD_BYTES, 2))  # no two offsets in a run
    assert encode(0, {"a": scattered}) is None
    # one more offset than any record of ours holds: a run of 10**12 would take all the process's memory
    huge = b'{"base": 0, "done": {"a": [[0, %d]]}}' % MAX_OFFSETS
    # a backwards run must not pay for a long one: their sum was 2, and 10**12 offsets were expanded (here
    # 3 * MAX_OFFSETS, which fails quickly)
    offset = b'{"base": 0, "done": {"a": [[0, %d]], "b": [[0, -%d]]}}' % (3 * MAX_OFFSETS, 3 * MAX_OFFSETS)
    for value in (
        None,
        b"",
        b"not json",
        b"[]",
        b'{"base": 1}',
        b'{"base": 1, "done": {"a": [[1]]}}',
        huge,
        offset,
    ):
        assert decode(value) is None


def test_only_what_lies_at_or_above_the_committed_offset_is_skipped() -> None:
    record = (10, {"a": {10, 11, 14}, "b": {12}})
    assert applicable(record, 12) == {"a": {14}, "b": {12}}
    # the group's offsets were moved back below the record (a reset means "send again"), or are gone
    assert applicable(record, 9) == {}
    assert applicable(record, None) == {}
    assert applicable(None, 12) == {}


def test_target_keys_follow_the_url_not_the_position_and_do_not_hold_it() -> None:
    slack = WebhookTarget("slack-0", "https://hooks.slack.com/services/T0/B0/SECRETTOKEN", "slack")
    json_a = WebhookTarget("json-0", "https://a.example/hook")
    json_b = WebhookTarget("json-1", "https://b.example/hook")
    first = dict(zip(["a", "b", "slack"], target_keys([json_a, json_b, slack]), strict=True))
    moved = WebhookTarget("json-0", json_b.url)  # the list edited: b is json-0 now
    second = dict(zip(["b", "slack"], target_keys([moved, slack]), strict=True))
    assert second == {"b": first["b"], "slack": first["slack"]}
    assert len(set(first.values())) == 3
    assert all("SECRET" not in key and len(key) == 16 for key in first.values())
    # the same URL configured twice: two targets, two keys
    assert len(set(target_keys([json_a, json_a]))) == 2


def test_pending_offsets_record_which_target_finished_what_above_the_committable_offset() -> None:
    pending = PendingOffsets()
    for offset in (10, 11, 12):
        pending.add(TP, offset, 2)
    pending.done(TP, 11, 0, "a")
    pending.done(TP, 11, 0, "b")  # finished by both, but 10 is still owed: kept
    pending.done(TP, 12, 0, "b")
    pending.done(TP, 10, 0, "b")
    assert pending.committable() == {TP: 10}
    assert pending.progress(TP, 10) == {"a": {11}, "b": {10, 11, 12}}
    pending.done(TP, 10, 0, "a")
    assert pending.committable() == {TP: 12}
    assert pending.progress(TP, 12) == {"b": {12}}  # below the committed offset: dropped
    pending.drop([TP])
    assert pending.progress(TP, 0) == {}


def test_carried_progress_is_skipped_and_kept_until_the_offset_is_taken_again() -> None:
    pending = PendingOffsets()
    pending.carry(TP, {"a": {5, 6}, "b": {6}, ALL: {7}})
    assert pending.skipped(TP, 5) == {"a"} and pending.skipped(TP, 6) == {"a", "b"}
    assert pending.skipped(TP, 4) == frozenset()
    # not taken yet: a commit meanwhile still writes it
    assert pending.progress(TP, 5) == {"a": {5, 6}, "b": {6}, ALL: {7}}
    pending.add(TP, 5, 1, pending.skipped(TP, 5))  # only b is sent it
    pending.add(TP, 6, 0, pending.skipped(TP, 6))  # nobody is
    assert pending.skipped(TP, 5) == frozenset()  # taken: no longer carried, now finished by a
    assert pending.committable() == {TP: 5}
    assert pending.progress(TP, 5) == {"a": {5, 6}, "b": {6}, ALL: {7}}
    pending.done(TP, 5, 0, "b")
    assert pending.committable() == {TP: 7}


def test_carried_progress_is_dropped_at_a_record_newer_than_it_offsets_reused() -> None:
    pending = PendingOffsets()
    pending.carry(TP, {"a": {5, 6, 7}}, written_ms=1_000)
    assert pending.skipped(TP, 5, 999) == {"a"}  # older than the progress: the record it is about
    assert pending.skipped(TP, 6, 1_001) == frozenset()  # newer: another record at a reused offset
    assert pending.skipped(TP, 7, 500) == frozenset()  # and so is everything after it
    assert pending.progress(TP, 0) == {}
    pending.carry(TP, {"a": {5}})  # no time known (-1): applied as before
    assert pending.skipped(TP, 5, 10**13) == {"a"}


def test_a_running_notifier_writes_a_partitions_progress_at_most_every_interval_and_always_at_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a broker that does not compact (Tansu) every record stays: the interval bounds its growth."""
    progress = ProgressLog(load_settings(), group_id="g", bootstrap="127.0.0.1:1")
    progress.partitions = 8
    progress.producer = object()  # type: ignore[assignment]  # only whether there is one is read here
    now = [1000.0]
    monkeypatch.setattr(notifier_progress.time, "monotonic", lambda: now[0])
    assert progress.changed(TP, 5, {"a": {5}})
    progress.written[TP], progress.written_at[TP] = (5, {"a": {5}}), now[0]
    assert not progress.changed(TP, 5, {"a": {5}}, final=True)  # nothing new
    now[0] += WRITE_INTERVAL_S - 0.1
    assert not progress.changed(TP, 5, {"a": {5, 6}})
    assert progress.changed(TP, 5, {"a": {5, 6}}, final=True)
    now[0] += 0.2
    assert progress.changed(TP, 5, {"a": {5, 6}})


def test_a_record_that_no_longer_describes_the_partition_is_superseded_even_by_an_empty_one() -> None:
    """The latest record applies again after a reset of the group's offsets to its base or below: it must
    not state progress that is over (everything delivered) or from an older base."""
    progress = ProgressLog(load_settings(), group_id="g", bootstrap="127.0.0.1:1")
    progress.partitions = 8
    progress.producer = object()  # type: ignore[assignment]  # only whether there is one is read here
    assert not progress.changed(TP, 7, {}, final=True)  # no record and nothing to state: nothing written
    progress.written[TP] = (0, {"b": {0, 1, 2}})  # e.g. read back on assignment
    assert progress.changed(TP, 3, {}, final=True)  # all finished since: an empty record replaces it
    assert progress.changed(TP, 1, {"b": {1, 2}}, final=True)  # same facts above a newer base
    assert not progress.changed(TP, 0, {"b": {0, 1, 2}}, final=True)
    progress.written[TP] = (3, {})
    assert not progress.changed(TP, 9, {}, final=True)  # an empty record holds for any later base


async def test_a_record_too_large_to_write_is_counted_in_the_notifiers_metrics() -> None:
    """Ops see progress that was not written (a restart then re-sends) on /metrics, not only in a log."""
    slack = WebhookTarget("slack-0", "https://hooks.example/x", "slack")
    notifier = Notifier(load_settings(), targets=[slack])
    notifier.progress.producer = object()  # type: ignore[assignment]  # a record too large is never sent
    registry = notifier.metrics.registry
    assert registry.get_sample_value("leadpulse_notifier_progress_dropped_total") == 0
    await notifier.progress.save(TP, 0, {"a": set(range(0, 4 * MAX_RECORD_BYTES, 2))})
    assert registry.get_sample_value("leadpulse_notifier_progress_dropped_total") == 1
    assert notifier.progress.dropped == 1
