"""Cyclic-GC thresholds of leadpulse's long-running processes (the worker and the sink).

Why: both hold many small objects for their whole life (the worker every owned lead's state; the sink its
open batches and, per partition, the ids it stored lately) and allocate a few containers per record. With
CPython's defaults (700 / 10 / 10) a young collection ran every ~100 records and the older generations,
holding all of that, were traversed again and again. Neither holds reference cycles in that data, so memory
is still freed by reference counting; only cyclic garbage (asyncio and client objects) waits longer, which
raises the worker's resident plateau by ~40-60 MiB (RELIABILITY.md).
"""

from __future__ import annotations

import gc

#: CPython's defaults are 700, 10, 10.
GC_THRESHOLDS = (100_000, 50, 10)


def tune_gc() -> None:
    """Collect less often. Worker, 200k benchmark events in-process: 26.6-30.1 CPU-s with the defaults,
    19.2 with these (docs/benchmarks.md); the sink's intake per record, docs/clickhouse.md."""
    gc.set_threshold(*GC_THRESHOLDS)
