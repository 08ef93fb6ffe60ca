"""Exponential back-off, shared by every loop that waits before trying again (the sink's inserts, the
worker's start-over, the notifier's dead letters, ClickHouse at start-up, webhook and collector retries).

Why one module: the doubling-with-a-cap rule was written five times with slightly different off-by-ones;
one definition keeps the documented delays (docs/clickhouse.md, docs/scoring.md) true for all of them.
"""

from __future__ import annotations


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """The wait before retry number ``attempt`` (counting from 1): ``base``, doubling, at most ``cap``."""
    if attempt <= 1:
        return float(min(cap, base))
    # 2 ** 1100 overflows a float; by then the cap was reached long ago
    return float(min(cap, base * 2.0 ** min(attempt - 1, 1000)))


class Backoff:
    """A back-off that remembers its attempts: ``next()`` after each failure, ``reset()`` after a
    success."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0

    def next(self) -> float:
        self.attempts += 1
        return backoff_seconds(self.attempts, self.base, self.cap)

    def reset(self) -> None:
        self.attempts = 0
