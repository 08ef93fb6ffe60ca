"""The worker's periodic SLA scan: due warnings/breaches and timed recycles of the owned leads, fired on the
event-time clock (``agents/worker_clock.py``) and written like a batch (``agents/worker_batch.py``).

Why a scan of durable deadlines rather than timers: the deadlines live in each lead's state
(``agents/sla.py``), so they survive restarts and move with the partition; the store keeps the next one per
lead, so a scan never decodes a lead with nothing due.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agents.core import check_timers, next_deadline
from agents.worker_batch import Batch, NotWritable, RecordTooLarge, flush
from agents.worker_clock import now_ms, timer_clock
from agents.worker_records import apply_step, batch_state
from streams.backoff import backoff_seconds

if TYPE_CHECKING:
    from agents.worker import LeadWorker

log = logging.getLogger("agents.worker")

# Back-off before the scan tries a lead it failed for again (each failure reloads the owned partitions).
RETRY_FIRST_S, RETRY_MAX_S = 30.0, 1800.0


@dataclass(slots=True)
class ScanFailure:
    """A lead the scan failed for: its partition (forgotten when that moves away, worker_rebalance), how
    many times in a row, when (``time.monotonic()``) it may be scanned again, and the deadline it was due
    at (``_forget_not_due``)."""

    partition: int | None
    failures: int
    retry_at: float
    deadline: int | None = None


async def scan(worker: LeadWorker) -> None:
    """Fire due SLA warnings/breaches and timed recycles; each fires once (the marker is in state)."""
    if worker.restoring:
        return
    now = timer_clock(
        now_ms(), worker.watermark_ms, worker.watermark_seen_at_ms, worker.idle_since_ms, worker.idle_after_ms
    )
    started = time.monotonic()
    retried: list[bytes] = []
    # Each lead's firings in a batch of its own, merged for the flush: a lead the core raises for, or whose
    # records cannot be written, is left out and the rest of the scan written (see _failed).
    parts: dict[bytes, Batch] = {}
    failed: set[bytes] = set()
    due = worker.store.due(now)
    if worker.scan_failed:
        _forget_not_due(worker, due)
    for key in due:
        failure = worker.scan_failed.get(key)
        if failure is not None:
            if started < failure.retry_at:
                continue
            retried.append(key)
        home = worker.store.partition_of(key)
        part = Batch()
        try:  # (the decode of a stored state and next_deadline too: raised here, the worker exited)
            state = worker.store.get(key)
            if state is None or home is None:
                worker.store.delete(key)
                continue
            batch_state(worker, part, key, home)
            apply_step(worker, part, key, home, check_timers(state, worker.rules, now))
            if key not in part.dirty:  # nothing fired after all: do not look at it again until it is due
                worker.store.put(key, home, state, next_deadline(state, worker.rules))
        except Exception:
            failed.add(key)
            _failed(worker, key, home)
            continue  # its firings are not written; the reload drops what the call did to its state
        parts[key] = part
    try:
        await _write(worker, parts, failed)
    finally:  # also when the write raises out (the broker): the leads that failed before it are counted
        report_failing(worker)
    for key in retried:  # scanned and written: its timers are back
        if key not in failed:
            worker.scan_failed.pop(key, None)
            log.info("the SLA scan succeeded again for lead %r", key.decode(errors="replace"))
    report_failing(worker)


async def _write(worker: LeadWorker, parts: dict[bytes, Batch], failed: set[bytes]) -> None:
    """The scan's firings, written together; a lead whose records cannot be written is left out (and added
    to ``failed``) and the rest written again."""
    while True:
        try:
            await flush(worker, _merged(parts.values()))
            return
        except RecordTooLarge as exc:
            # A firing grew a state at the limit past it: refused for good, so retried after a reload it came
            # back at every scan, and each time the scan's other firings were dropped with it.
            keys = {key for _topic, key, _size in exc.records if key is not None and key in parts}
            unwritten: RecordTooLarge | NotWritable = exc
        except NotWritable as exc:  # a fired state that next_deadline or its encoding raises for: the same
            keys = {key for key in exc.failures if key in parts}
            unwritten = exc
        if not keys:
            raise unwritten
        for key in keys:  # nothing was sent: written again without them
            failed.add(key)
            _failed(worker, key, parts.pop(key).home.get(key), unwritten)


def _forget_not_due(worker: LeadWorker, due: list[bytes]) -> None:
    """Leads the scan failed for that have nothing due any more (a later event moved their deadlines, or
    they were erased or deleted): nothing of theirs waits for a retry. Kept, they held
    ``leadpulse_worker_sla_scan_failing_leads`` above 0 (and its alert on) until a rebalance; and a lead due
    again later starts its back-off afresh.

    Not due with the deadline it failed at is not such a lead: the timer clock stepped back (caught up, it
    is the wall clock; a backlog of older events read then makes it the newest event time again), and the
    lead is due again once the clock passes it. Forgotten, it dropped the gauge to 0 (restarting its alert's
    5 min) and its back-off started afresh."""
    waiting = set(due)
    deadlines = worker.store.deadlines
    for key in [
        key
        for key, failure in worker.scan_failed.items()
        if key not in waiting and deadlines.get(key) != failure.deadline
    ]:
        del worker.scan_failed[key]
        log.info(
            "the SLA scan no longer waits to retry lead %r: nothing of it is due",
            key.decode(errors="replace"),
        )


def report_failing(worker: LeadWorker) -> None:
    """``leadpulse_worker_sla_scan_failing_leads``: leads whose SLA timers wait for a retry that works, the
    alert's signal (the failures counter also counts failures a retry 30 s later fixed)."""
    if worker.metrics:
        worker.metrics.sla_scan_failing_leads.set(len(worker.scan_failed))


def _merged(parts: Iterable[Batch]) -> Batch:
    """One batch of the leads' own: what the scan writes."""
    batch = Batch()
    for part in parts:
        batch.states.update(part.states)
        batch.home.update(part.home)
        batch.dirty |= part.dirty
        batch.sends += part.sends
        batch.counted += part.counted
    return batch


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
    what the call did to its state in place. The rest of the scan is written first (``scan``).

    Why: the exception escaped the poll loop and the worker exited; after a restart the same lead was due
    again and raised again, a crash loop. Then the lead was left out of the scans until the process
    restarted, with nothing but a log line: a failure that passes (the broker, a state a later event
    fixes) cost the lead its SLA alerts for good. Retried after the reload, it gets them back; the back-off
    keeps a lead that fails for good from reloading the partitions at every scan. Its events are still
    processed throughout. Why the rest of the scan is written: the scan stopped at the first failing lead and
    wrote nothing, so a scan that met any failing lead out of its back-off was lost, and once such leads
    outnumbered the scans of one back-off (a core bug hitting a class of leads: some 900 at the 30 min cap,
    fewer the longer a reload takes) every scan met one and no lead of the worker got a warning or breach
    (tests/integration/test_worker_sla_scan_retry.py). Each lead's firings are its own (``check_timers``
    looks at one state), and the others' are durable before the reload reads the changelog back."""
    previous = worker.scan_failed.get(key)
    failures = 1 if previous is None else previous.failures + 1
    delay = backoff_seconds(failures, RETRY_FIRST_S, RETRY_MAX_S)
    # (the stored deadline: nothing of the scan's is stored before it is written, and this is not written)
    deadline = worker.store.deadlines.get(key)
    worker.scan_failed[key] = ScanFailure(partition, failures, time.monotonic() + delay, deadline)
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
