"""Per-write-key token buckets of the collector (DESIGN §10)."""

from __future__ import annotations

import math

import pytest

from streams.rate_limit import TokenBuckets

pytestmark = pytest.mark.unit


def test_a_burst_passes_then_the_rate_applies_and_refills_with_time() -> None:
    buckets = TokenBuckets(rate=100, burst=1000)
    assert buckets.take("web", 1000, now=0.0) == 0  # the whole burst at once
    assert buckets.take("web", 50, now=0.0) == pytest.approx(0.5)  # 50 events at 100/s
    assert buckets.take("web", 50, now=0.5) == 0  # refilled by then
    assert buckets.take("web", 1, now=0.5) == pytest.approx(0.01)


def test_each_key_has_its_own_bucket() -> None:
    buckets = TokenBuckets(rate=10, burst=500)
    assert buckets.take("crm", 500, now=0.0) == 0
    assert buckets.take("crm", 10, now=0.0) == pytest.approx(1.0)  # 10 events at 10/s
    assert buckets.take("web", 500, now=0.0) == 0  # not crowded out by the other integration


def test_a_request_larger_than_the_burst_can_never_pass_and_zero_rate_means_no_limit() -> None:
    assert math.isinf(TokenBuckets(rate=10, burst=500).take("web", 501, now=0.0))
    unlimited = TokenBuckets(rate=0, burst=500)
    assert all(unlimited.take("web", 10_000, now=0.0) == 0 for _ in range(3))


def test_a_wall_clock_stepped_back_does_not_lock_a_key_out_for_the_size_of_the_step() -> None:
    """The collector's clock is the wall clock (it also stamps received_at). When NTP stepped it back an
    hour, the negative elapsed time was taken as negative refill: the key's bucket went 36,000 events into
    debt and every request of that key got 429 for the next hour (the tracker's beacons do not retry)."""
    buckets = TokenBuckets(rate=10, burst=100)
    assert buckets.take("web", 1, now=10_000.0) == 0
    assert buckets.take("web", 1, now=10_000.0 - 3600) == 0  # 98 tokens left, not -35,901
    assert buckets.take("web", 98, now=10_000.0 - 3600) == 0
    assert buckets.take("web", 10, now=10_000.0 - 3599) == 0  # refills from the new time on
