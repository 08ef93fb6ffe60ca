"""The worker's clocks: wall time in ms, and the event-time clock its SLA deadlines are compared with.

Pure apart from ``now_ms``: ``timer_clock`` takes the watermark and idleness the worker tracks as parameters,
so it is testable without a broker (STYLE: functional core, imperative shell).
"""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)


def timer_clock(
    wall_ms: int,
    watermark_ms: int | None,
    watermark_seen_at_ms: int,
    idle_since_ms: int | None,
    idle_after_ms: int,
) -> int:
    """The time SLA deadlines are compared with: the wall clock, held back while a backlog of older events
    is being processed (a replay or catch-up), so that a follow-up still in the backlog is not reported as
    missed. Live, the newest event time tracks the wall clock and this is just ``wall_ms``; between
    batches the held-back clock advances with the wall clock from the newest event seen.

    Once the worker has been caught up (every fetch empty) for ``idle_after_s``, the backlog is gone and
    the clock is the wall clock again (Flink's ``withIdleness``). Without this, after a replay of events
    hours old and no live traffic since, timers due in that gap would wait for newer events."""
    if watermark_ms is None:
        return wall_ms
    if idle_since_ms is not None and wall_ms - idle_since_ms >= idle_after_ms:
        return wall_ms
    return min(wall_ms, watermark_ms + (wall_ms - watermark_seen_at_ms))
