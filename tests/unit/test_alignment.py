"""Cross-topic alignment of co-partitioned input topics (agents/alignment.py): a record is released only
when no older record can still come from another topic of its partition number, or after the wait bound."""

from __future__ import annotations

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from agents.alignment import TopicAligner

pytestmark = pytest.mark.unit

DOWNLOADS, ACTIVITIES, HOPS = "events.downloads", "sales.activities", "internal.identity"
D0, A0, D1, H0 = (
    TopicPartition(DOWNLOADS, 0),
    TopicPartition(ACTIVITIES, 0),
    TopicPartition(DOWNLOADS, 1),
    TopicPartition(HOPS, 0),
)
OWNED = [D0, A0, D1, TopicPartition(ACTIVITIES, 1), H0]


def records(tp: TopicPartition, *stamps: int, first_offset: int = 0) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(tp.topic, tp.partition, first_offset + i, ts, 0, b"k", b"v", None, 1, 1, ())
        for i, ts in enumerate(stamps)
    ]


def aligner() -> TopicAligner:
    return TopicAligner([DOWNLOADS, ACTIVITIES], max_wait_s=2.0)


def offsets(released: dict[TopicPartition, list[ConsumerRecord]]) -> dict[TopicPartition, list[int]]:
    return {tp: [r.offset for r in rs] for tp, rs in released.items()}


def test_records_wait_for_a_co_partitioned_topic_that_is_behind() -> None:
    """The audit's case: the rep's ``accepted`` fetched before the demo request it answers."""
    align = aligner()
    assert align.add({A0: records(A0, 500, 900)}) == {}
    behind = {D0}  # downloads[0] has records not read yet
    released, blocked = align.release(OWNED, lambda tp: tp not in behind, now_s=0.0)
    assert released == {} and blocked == {A0}
    align.add({D0: records(D0, 100, 400, 800)})
    behind.clear()  # read to its end
    released, blocked = align.release(OWNED, lambda tp: True, now_s=0.1)
    assert offsets(released) == {D0: [0, 1, 2], A0: [0, 1]} and blocked == set()
    assert len(align) == 0


def test_a_group_releases_only_up_to_the_newest_record_of_a_topic_still_being_read() -> None:
    align = aligner()
    align.add({A0: records(A0, 100, 300, 700), D0: records(D0, 200, 500)})
    # both still have more on the broker: nothing newer than 500 may go, downloads could still bring 600
    released, blocked = align.release(OWNED, lambda tp: False, now_s=0.0)
    assert offsets(released) == {A0: [0, 1], D0: [0, 1]} and blocked == set()
    assert [r.offset for r in align.held[A0]] == [2]
    # downloads[0] now empty and behind: activities[0]'s 700 waits
    released, blocked = align.release(OWNED, lambda tp: False, now_s=0.5)
    assert released == {} and blocked == {A0}


def test_a_topic_with_nothing_left_to_read_never_holds_the_others_back() -> None:
    align = aligner()
    align.add({A0: records(A0, 100, 900)})
    released, _ = align.release(OWNED, lambda tp: True, now_s=0.0)
    assert offsets(released) == {A0: [0, 1]}


def test_a_partition_that_stays_behind_is_waited_for_at_most_the_bound() -> None:
    align = aligner()
    align.add({A0: records(A0, 100)})
    never = lambda tp: False  # noqa: E731 - downloads[0] never comes back
    assert align.release(OWNED, never, now_s=10.0)[0] == {}
    assert align.release(OWNED, never, now_s=11.9)[0] == {}
    released, blocked = align.release(OWNED, never, now_s=12.0)
    assert offsets(released) == {A0: [0]} and blocked == set()
    assert align.waiting_since == {}  # the next wait is timed afresh


def test_partition_numbers_are_aligned_independently() -> None:
    align = aligner()
    align.add({A0: records(A0, 100), D1: records(D1, 50)})
    behind = {D0}  # only partition 0 has a topic behind
    released, blocked = align.release(OWNED, lambda tp: tp not in behind, now_s=0.0)
    assert offsets(released) == {D1: [0]} and blocked == {A0}


def test_internal_hops_are_never_held() -> None:
    align = aligner()
    now = align.add({H0: records(H0, 1), A0: records(A0, 5)})
    assert offsets(now) == {H0: [0]} and list(align.held) == [A0]


def test_released_records_are_a_prefix_in_offset_order_even_when_timestamps_go_back() -> None:
    """Offsets are committed in order: a record is never released before an earlier one of its partition."""
    align = aligner()
    align.add({A0: records(A0, 100, 600, 200), D0: records(D0, 300, 400)})
    released, _ = align.release(OWNED, lambda tp: False, now_s=0.0)  # read up to 200 and 400: horizon 200
    assert offsets(released) == {A0: [0]}
    assert [r.offset for r in align.held[A0]] == [1, 2] and [r.offset for r in align.held[D0]] == [0, 1]


def test_dropping_forgets_held_records_and_waits() -> None:
    align = aligner()
    align.add({A0: records(A0, 100), D1: records(D1, 100)})
    align.release(OWNED, lambda tp: False, now_s=0.0)
    align.drop([A0])
    assert list(align.held) == [D1]
    align.drop()
    assert len(align) == 0 and align.waiting_since == {}
