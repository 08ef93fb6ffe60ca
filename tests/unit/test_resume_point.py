"""Where a resuming sink skips: only offsets actually stored, the gaps among them taken again (a poison
record whose dead letter was unsent when the sink died sits in one), and a cut gap listing ends skipping
before the first gap it left out rather than skipping past it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from schemas.registry import default_registry
from sinks.batch import ClickHouseBatchSink
from sinks.recent_ids import RecentIds
from sinks.record_intake import RecordIntake
from sinks.resume_point import ResumePoint, resume_point
from streams.samples import sample_events
from streams.settings import Settings

pytestmark = pytest.mark.unit


def test_offsets_up_to_skip_through_are_stored_but_those_in_a_gap() -> None:
    point = ResumePoint(10, ((0, 1), (3, 3), (6, 8)))
    assert [o for o in range(13) if point.stored(o)] == [2, 4, 5, 9, 10]
    assert [o for o in range(13) if point.in_gap(o)] == [0, 1, 3, 6, 7, 8]


def test_without_gaps_everything_up_to_skip_through_is_stored() -> None:
    point = ResumePoint(4)
    assert [o for o in range(7) if point.stored(o)] == [0, 1, 2, 3, 4]
    assert not any(point.in_gap(o) for o in range(7))


def test_a_listing_within_the_limit_keeps_the_highest_stored_offset() -> None:
    assert resume_point(10, [(6, 8), (3, 3)], limit=2) == ResumePoint(10, ((3, 3), (6, 8)))
    assert resume_point(10, [], limit=2) == ResumePoint(10)


def test_a_cut_listing_ends_skipping_just_before_the_first_gap_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The listing asks for limit + 1 gaps: the third says there are more than two, from offset 12 on.
    point = resume_point(100, [(1, 1), (4, 5), (12, 12)], limit=2, where="t[0]")
    assert point == ResumePoint(11, ((1, 1), (4, 5)))
    assert [o for o in range(14) if point.stored(o)] == [0, 2, 3, 6, 7, 8, 9, 10, 11]
    assert "more than 2 gaps" in caplog.text and "t[0]" in caplog.text


class _Taken:
    """What one ``RecordIntake.take`` did with a partition's fetched records."""

    def __init__(self, letters: list[int], rows: int, duplicates: int, next_offsets: dict[Any, int]) -> None:
        self.letters, self.rows, self.duplicates, self.next_offsets = letters, rows, duplicates, next_offsets


def _take(
    settings: Settings, messages: list[ConsumerRecord[bytes, bytes]], resume: ResumePoint | None
) -> _Taken:
    letters: list[int] = []
    duplicates: list[str] = []
    sink = ClickHouseBatchSink(client=None)  # type: ignore[arg-type]  # nothing is written here

    def dead_letter(*args: Any) -> None:
        letters.append(args[2])

    intake = RecordIntake(
        settings,
        default_registry(),
        b"key",
        sink,
        RecentIds(100),
        fast_path=True,
        dead_letter=dead_letter,
        duplicate=lambda table: duplicates.append(table.table),
        erased=lambda table: None,
    )
    next_offsets: dict[tuple[str, int], int] = {}
    tp = TopicPartition(messages[0].topic, messages[0].partition)
    intake.take(tp, messages, resume=resume, unwritten=0, erasures=None, next_offsets=next_offsets)
    return _Taken(letters, sum(batch.size for batch in sink.batches.values()), len(duplicates), next_offsets)


def _records(tp: TopicPartition, values: list[bytes]) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"k", value, None, 1, len(value), ())
        for offset, value in enumerate(values)
    ]


def test_the_intake_takes_the_records_in_gaps_again_and_skips_the_stored_ones(
    make_settings: Callable[..., Settings],
) -> None:
    """A partition's offsets 0..10 with a poison record at 3 whose letter was never sent: offsets 0-2 and
    4-10 are stored. Resumed with the gap, the poison record is dead-lettered again and nothing else is
    taken; resumed at the highest stored offset alone (the old rule), it was skipped."""
    settings = make_settings(topic_prefix="u-")
    registry = default_registry()
    tp = TopicPartition(settings.topic("events.content_views"), 0)
    values = [registry.encode("content_view", e) for e in sample_events("content_view", 10, seed=5)]
    values[3:3] = [b"poison"]
    messages = _records(tp, values)

    def take(resume: ResumePoint | None) -> tuple[list[int], int, dict[tuple[str, int], int]]:
        taken = _take(settings, messages, resume)
        return taken.letters, taken.rows, taken.next_offsets

    key = (tp.topic, tp.partition)
    assert take(ResumePoint(10, ((3, 3),))) == ([3], 0, {key: 11})
    assert take(ResumePoint(10)) == ([], 0, {key: 11})  # the old rule: the poison record is lost
    assert take(ResumePoint(10, ((3, 4),))) == ([3], 1, {key: 11})  # a valid record in a gap is stored
    assert take(None) == ([3], 10, {key: 11})


def test_a_re_send_in_a_gap_of_a_record_stored_before_it_is_not_stored_again(
    make_settings: Callable[..., Settings],
) -> None:
    """Offset 3 re-sends offset 1's event: it was dropped as a re-send, not stored, so it lies in a gap
    with the poison record at 5 whose letter was never sent. Resumed, the poison record is dead-lettered
    and the re-send is dropped again, because the stored offsets skipped before it are remembered; taken
    as new it would be stored a second time (the daily views count every row)."""
    settings = make_settings(topic_prefix="u-")
    registry = default_registry()
    tp = TopicPartition(settings.topic("events.content_views"), 0)
    events = list(sample_events("content_view", 8, seed=7))
    values = [registry.encode("content_view", e) for e in events]
    values[3:3] = [values[1]]
    values[5:5] = [b"poison"]
    taken = _take(settings, _records(tp, values), ResumePoint(9, ((3, 3), (5, 5))))
    assert (taken.letters, taken.rows, taken.duplicates) == ([5], 0, 1)
    # a record in a gap whose id no skipped record holds is stored
    values[3] = registry.encode("content_view", next(iter(sample_events("content_view", 1, seed=99))))
    taken = _take(settings, _records(tp, values), ResumePoint(9, ((3, 3), (5, 5))))
    assert (taken.letters, taken.rows, taken.duplicates) == ([5], 1, 0)
