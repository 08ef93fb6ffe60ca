"""The worker benchmark's rate window (bench.worker_harness.throughput).

The worker counts a batch only once it is durable, so the window must start at the first count seen, not at
the last sample that saw none: that one timed the later batches but counted the first one's events too."""

import pytest

from bench.worker_harness import throughput

pytestmark = pytest.mark.unit


def test_the_first_batch_is_neither_counted_nor_timed() -> None:
    # 10 s of silence while the first 40k events are worked on, then 160k more in 8 s
    samples = [(0.0 + i * 0.1, 40_000.0, 10.0) for i in range(3)] + [(8.2, 200_000.0, 18.0)]
    result = throughput(samples, 200_000)
    assert result.events == 160_000
    assert result.seconds == pytest.approx(8.2)
    assert result.events_per_s == pytest.approx(160_000 / 8.2)
    assert result.cpu_seconds == pytest.approx(8.0)
    assert result.complete


def test_a_prefix_is_marked_incomplete() -> None:
    result = throughput([(1.0, 5_000.0, 1.0), (3.0, 25_000.0, 3.0)], 50_000)
    assert result.events == 20_000
    assert not result.complete


def test_one_batch_holding_everything_has_no_window() -> None:
    with pytest.raises(RuntimeError, match="first counted batch held all 200,000 events"):
        throughput([(1.0, 200_000.0, 5.0)], 200_000)
