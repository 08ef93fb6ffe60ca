"""The worker's periodic SLA scan: due warnings/breaches and timed recycles of the owned leads, fired on the
event-time clock (``agents/worker_clock.py``) and written like a batch (``agents/worker_batch.py``).

Why a scan of durable deadlines rather than timers: the deadlines live in each lead's state
(``agents/sla.py``), so they survive restarts and move with the partition; the store keeps the next one per
lead, so a scan never decodes a lead with nothing due.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agents.core import check_timers, next_deadline
from agents.worker_batch import Batch, NotWritable, RecordTooLarge, flush
from agents.worker_clock import now_ms, timer_clock
from streams.backoff import backoff_seconds

if TYPE_CHECKING:
    from agents.worker import LeadWorker

log = logging.getLogger("agents.worker")

# Back-off before the scan tries a lead it failed for again (each failure reloads the owned partitions).
RETRY_FIRST_S, RETRY_MAX_S = 30.0, 1800.0


@dataclass(slots=True)
class ScanFailure:
    """A lead the scan failed for: its partition (forgotten when that moves away, worker_rebalance), how
    many times in a row, and when (``time.monotonic()``) it may be scanned again."""

    partition: int | None
    failures: int
    retry_at: float


async def scan(worker: LeadWorker) -> None:
    """Fire due SLA warnings/breaches and timed recycles; each fires once (the marker is in state)."""
    if worker.restoring:
        return
    now = timer_clock(
        now_ms(), worker.watermark_ms, worker.watermark_seen_at_ms, worker.idle_since_ms, worker.idle_after_ms
    )
    batch = Batch()
    started = time.monotonic()
    retried: list[bytes] = []
    for key in worker.store.due(now):
        failure = worker.scan_failed.get(key)
        if failure is not None:
            if started < failure.retry_at:
                continue
            retried.append(key)
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
            _failed(worker, key, home)
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
            _failed(worker, key, batch.home.get(key), exc)
        return
    except NotWritable as exc:  # a fired state that next_deadline or its encoding raises for: the same
        keys = {key for key in exc.failures if key in batch.states}
        if not keys:
            raise
        for key in keys:
            _failed(worker, key, batch.home.get(key), exc)
        return
    for key in retried:  # scanned and written: its timers are back
        worker.scan_failed.pop(key, None)
        log.info("the SLA scan succeeded again for lead %r", key.decode(errors="replace"))


def _failed(
    worker: LeadWorker,
    key: bytes,
    partition: int | None,
    unwritten: RecordTooLarge | NotWritable | None = None,
) -> None:
    """The core raised for a due lead (a bug; or its stored state does not decode), or what it fired made
    a record too large to write or one that could not be built (``unwritten``): the lead is left out of the
    scans for a back-off (``RETRY_FIRST_S`` doubling to ``RETRY_MAX_S``), counted in
    ``leadpulse_worker_sla_scan_failures_total``, and the owned partitions are reloaded at once to drop
    what the call did to its state in place.

    Why: the exception escaped the poll loop and the worker exited; after a restart the same lead was due
    again and raised again, a crash loop. Then the lead was left out of the scans until the process
    restarted, with nothing but a log line: a failure that passes (the broker, a state a later event
    fixes) cost the lead its SLA alerts for good. Retried after the reload, it gets them back; the back-off
    keeps a lead that fails for good from reloading the partitions at every scan. Its events are still
    processed throughout."""
    previous = worker.scan_failed.get(key)
    failures = 1 if previous is None else previous.failures + 1
    delay = backoff_seconds(failures, RETRY_FIRST_S, RETRY_MAX_S)
    worker.scan_failed[key] = ScanFailure(partition, failures, time.monotonic() + delay)
    if worker.metrics:
        worker.metrics.sla_scan_failures.inc()
    if unwritten is not None:
        log.error(
            "the SLA scan's writes for lead %r are not written, %s: its timers are scanned again in %.0f s "
            "(failure %d in a row); the owned partitions are reloaded to drop what the scan did to its state",
            key.decode(errors="replace"),
            unwritten,
            delay,
            failures,
        )
    else:
        log.exception(
            "the SLA scan raised for lead %r: its timers are scanned again in %.0f s (failure %d in a row); "
            "the owned partitions are reloaded to drop what the scan did to its state",
            key.decode(errors="replace"),
            delay,
            failures,
        )
    worker.reload_pending = True
    worker.retry_at = 0.0  # not the broker's doing: no back-off
