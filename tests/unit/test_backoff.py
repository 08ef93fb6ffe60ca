"""The one back-off rule every retry loop uses (streams/backoff.py)."""

from __future__ import annotations

import pytest

from streams.backoff import Backoff, backoff_seconds

pytestmark = pytest.mark.unit


def test_backoff_starts_at_base_doubles_and_stops_at_the_cap() -> None:
    delays = [backoff_seconds(attempt, 0.2, 30.0) for attempt in range(1, 11)]
    assert delays[:8] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6])
    assert delays[8:] == [30.0, 30.0]


def test_an_attempt_count_far_past_the_cap_does_not_overflow() -> None:
    assert backoff_seconds(5_000, 0.5, 10.0) == 10.0
    assert backoff_seconds(0, 0.5, 10.0) == 0.5


def test_backoff_object_doubles_per_failure_and_starts_again_after_reset() -> None:
    backoff = Backoff(0.5, 10.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.next() == 0.5
