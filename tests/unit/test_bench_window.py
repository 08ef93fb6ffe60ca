"""The worker benchmark's rate window (bench.worker_harness.throughput).

The worker counts a batch only once it is durable, so the window must start at the first count seen, not at
the last poll that saw none: that one timed the later batches but counted the first one's events too."""

import pytest

from bench.worker_harness import throughput

pytestmark = pytest.mark.unit

IDLE = (0.0, 0.0, 2.0)  # the last poll before the first batch was counted


def test_the_first_batch_is_neither_counted_nor_timed() -> None:
    # the first 40k events counted at 0.1 s (their work started before the idle poll), then 160k in 8.1 s
    counted = [(0.1 + i * 0.1, 40_000.0, 10.0) for i in range(3)] + [(8.2, 200_000.0, 18.0)]
    result = throughput(IDLE, counted, 200_000)
    assert result.events == 160_000
    assert result.seconds == pytest.approx(8.1)
    assert result.events_per_s == pytest.approx(160_000 / 8.1)
    assert result.cpu_seconds == pytest.approx(8.0)
    assert result.complete and not result.upper_bound


def test_a_prefix_is_marked_incomplete() -> None:
    result = throughput(IDLE, [(1.0, 5_000.0, 1.0), (3.0, 25_000.0, 3.0)], 50_000)
    assert result.events == 20_000
    assert not result.complete


def test_one_batch_holding_everything_is_an_upper_bound() -> None:
    result = throughput(IDLE, [(0.1, 2_000.0, 5.0)], 2_000)
    assert result.upper_bound
    assert result.events == 2_000
    assert result.seconds == pytest.approx(0.1)
