"""The SLA scan's memory of the leads it failed for (``agents.worker_sla_scan``): what makes it forget one."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agents import worker_sla_scan
from agents.lead_store import LeadStore

pytestmark = pytest.mark.unit

KEY = b"L-1"


def _worker() -> Any:
    store = LeadStore()
    store.restore(0, KEY, b"not a lead state", 1_000)  # due at 1 000, raises when decoded
    return SimpleNamespace(
        restoring=False,
        watermark_ms=None,
        watermark_seen_at_ms=0,
        idle_since_ms=None,
        idle_after_ms=0,
        store=store,
        scan_failed={},
        metrics=None,
        reload_pending=False,
        retry_at=0.0,
    )


def _scan_at(
    worker: Any, clock_ms: int, monkeypatch: pytest.MonkeyPatch, write_error: Exception | None = None
) -> None:
    monkeypatch.setattr(worker_sla_scan, "timer_clock", lambda *_args: clock_ms)

    async def flushed(_worker: Any, _batch: Any) -> None:
        if write_error is not None:
            raise write_error

    monkeypatch.setattr(worker_sla_scan, "flush", flushed)
    asyncio.run(worker_sla_scan.scan(worker))


class _Gauge:
    def __init__(self) -> None:
        self.value: float | None = None

    def set(self, value: float) -> None:
        self.value = value


def test_the_failing_leads_gauge_counts_a_failure_when_the_scans_write_raises_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gauge (the alert's signal) was set only at the end of a scan: a scan whose write raised out (the
    broker gone; the worker starts over) left out the leads it had just failed for, until a scan that
    finished."""
    worker = _worker()
    worker.metrics = SimpleNamespace(
        sla_scan_failing_leads=_Gauge(), sla_scan_failures=SimpleNamespace(inc=int)
    )
    with pytest.raises(ConnectionError):
        _scan_at(worker, 2_000, monkeypatch, write_error=ConnectionError("broker gone"))
    assert KEY in worker.scan_failed
    assert worker.metrics.sla_scan_failing_leads.value == 1  # None on the old code


def test_a_failing_lead_still_waits_when_the_timer_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer clock steps back (caught up at the wall clock, then a backlog of older events read: the
    clock is the newest event time again): the failing lead's deadline is unchanged, only not reached yet.
    It was forgotten as 'nothing due any more': the failing-leads gauge fell to 0 (resetting its alert's
    5 min), and the lead's back-off started afresh at 30 s when the clock passed its deadline again."""
    worker = _worker()
    _scan_at(worker, 2_000, monkeypatch)
    assert KEY in worker.scan_failed and worker.scan_failed[KEY].failures == 1
    _scan_at(worker, 500, monkeypatch)  # the clock stepped back before the deadline
    assert KEY in worker.scan_failed  # forgotten on the old code
    assert worker.scan_failed[KEY].failures == 1


def test_a_failing_lead_whose_deadline_moved_or_went_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _worker()
    _scan_at(worker, 2_000, monkeypatch)
    worker.store.deadlines[KEY] = 5_000  # a later event moved it
    _scan_at(worker, 2_000, monkeypatch)
    assert KEY not in worker.scan_failed
    _scan_at(worker, 6_000, monkeypatch)  # due again: failed afresh
    assert worker.scan_failed[KEY].failures == 1
    worker.store.delete(KEY)  # erased
    _scan_at(worker, 6_000, monkeypatch)
    assert KEY not in worker.scan_failed
