"""``worker_records._counted_before``: which records of a fetch the worker counted in its metrics already (a
batch processed again after its checkpoint was lost), split per partition at the offset it counted up to."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from agents.worker_records import _counted_before

pytestmark = pytest.mark.unit

A, B, C = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("u", 0)


def _records(first: int, last: int) -> list[Any]:
    return [SimpleNamespace(offset=o) for o in range(first, last + 1)]


def _offsets(parts: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, list[int]]:
    return {tp: [r.offset for r in records] for tp, records in parts.items()}


def test_nothing_counted_yet_is_all_new() -> None:
    parts = {A: _records(0, 3)}
    again, new = _counted_before(SimpleNamespace(counted_to={}), parts)  # type: ignore[arg-type]
    assert again == {} and new is parts


def test_each_partition_is_split_at_the_offset_counted_up_to() -> None:
    worker = SimpleNamespace(counted_to={A: 5, B: 10, C: 2})
    parts = {A: _records(3, 7), B: _records(4, 8), C: _records(2, 4)}
    again, new = _counted_before(worker, parts)  # type: ignore[arg-type]
    assert _offsets(again) == {A: [3, 4], B: [4, 5, 6, 7, 8]}
    assert _offsets(new) == {A: [5, 6, 7], C: [2, 3, 4]}
