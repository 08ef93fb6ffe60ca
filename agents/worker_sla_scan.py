"""The worker's periodic SLA scan: due warnings/breaches and timed recycles of the owned leads, fired on the
event-time clock (``agents/worker_clock.py``) and written like a batch (``agents/worker_batch.py``).

Why a scan of durable deadlines rather than timers: the deadlines live in each lead's state
(``agents/sla.py``), so they survive restarts and move with the partition; the store keeps the next one per
lead, so a scan never decodes a lead with nothing due.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agents.core import check_timers, next_deadline
from agents.worker_batch import Batch, flush
from agents.worker_clock import now_ms, timer_clock

if TYPE_CHECKING:
    from agents.worker import LeadWorker


async def scan(worker: LeadWorker) -> None:
    """Fire due SLA warnings/breaches and timed recycles; each fires once (the marker is in state)."""
    if worker.restoring:
        return
    now = timer_clock(
        now_ms(), worker.watermark_ms, worker.watermark_seen_at_ms, worker.idle_since_ms, worker.idle_after_ms
    )
    batch = Batch()
    for key in worker.store.due(now):
        home = worker.store.partition_of(key)
        state = worker.store.get(key)
        if state is None or home is None:
            worker.store.delete(key)
            continue
        worker._get(batch, key, home)
        worker._apply(batch, key, home, check_timers(state, worker.rules, now))
        if key not in batch.dirty:  # nothing fired after all: do not look at it again until it is due
            worker.store.put(key, home, state, next_deadline(state, worker.rules))
    await flush(worker, batch)
