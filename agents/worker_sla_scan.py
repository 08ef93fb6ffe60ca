"""The worker's periodic SLA scan: due warnings/breaches and timed recycles of the owned leads, fired on the
event-time clock (``agents/worker_clock.py``) and written like a batch (``agents/worker_batch.py``).

Why a scan of durable deadlines rather than timers: the deadlines live in each lead's state
(``agents/sla.py``), so they survive restarts and move with the partition; the store keeps the next one per
lead, so a scan never decodes a lead with nothing due.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agents.core import check_timers, next_deadline
from agents.worker_batch import Batch, NotWritable, RecordTooLarge, flush
from agents.worker_clock import now_ms, timer_clock

if TYPE_CHECKING:
    from agents.worker import LeadWorker

log = logging.getLogger("agents.worker")


async def scan(worker: LeadWorker) -> None:
    """Fire due SLA warnings/breaches and timed recycles; each fires once (the marker is in state)."""
    if worker.restoring:
        return
    now = timer_clock(
        now_ms(), worker.watermark_ms, worker.watermark_seen_at_ms, worker.idle_since_ms, worker.idle_after_ms
    )
    batch = Batch()
    for key in worker.store.due(now):
        if key in worker.scan_failed:
            continue
        home = worker.store.partition_of(key)
        try:  # (the decode of a stored state and next_deadline too: raised here, the worker exited)
            state = worker.store.get(key)
            if state is None or home is None:
                worker.store.delete(key)
                continue
            worker._get(batch, key, home)
            worker._apply(batch, key, home, check_timers(state, worker.rules, now))
            if key not in batch.dirty:  # nothing fired after all: do not look at it again until it is due
                worker.store.put(key, home, state, next_deadline(state, worker.rules))
        except Exception:
            _failed(worker, key)
            return  # nothing of this scan written
    try:
        await flush(worker, batch)
    except RecordTooLarge as exc:
        # A firing grew a state at the limit past it: refused for good, so retried after a reload it came
        # back at every scan, and each time the scan's other firings were dropped with it.
        keys = {key for _topic, key, _size in exc.records if key is not None and key in batch.states}
        if not keys:
            raise
        for key in keys:
            _failed(worker, key, exc)
    except NotWritable as exc:  # a fired state that next_deadline or its encoding raises for: the same
        keys = {key for key in exc.failures if key in batch.states}
        if not keys:
            raise
        for key in keys:
            _failed(worker, key, exc)


def _failed(worker: LeadWorker, key: bytes, unwritten: RecordTooLarge | NotWritable | None = None) -> None:
    """The core raised for a due lead (a bug; or its stored state does not decode), or what it fired made
    a record too large to write or one that could not be built (``unwritten``): the lead is left out of the
    scans of this process, and the owned partitions are reloaded at once to drop what the call did to its
    state in place.

    Why: the exception escaped the poll loop and the worker exited; after a restart the same lead was due
    again and raised again, a crash loop. Its events are still processed; only its timers wait (for a
    fixed version, or a restart), with the error in the log."""
    if unwritten is not None:
        log.error(
            "the SLA scan's writes for lead %r are not written, %s: its timers are not scanned again by this "
            "process; the owned partitions are reloaded to drop what the scan did to its state",
            key.decode(errors="replace"),
            unwritten,
        )
    else:
        log.exception(
            "the SLA scan raised for lead %r: its timers are not scanned again by this process; the owned "
            "partitions are reloaded to drop what the scan did to its state",
            key.decode(errors="replace"),
        )
    worker.scan_failed.add(key)
    worker.reload_pending = True
    worker.retry_at = 0.0  # not the broker's doing: no back-off
