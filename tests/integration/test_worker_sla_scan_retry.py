"""A lead the SLA scan failed for gets its timers back: retried after a back-off (bounded, so a lead that
fails for good does not reload the partitions at every scan) and counted in a metric.

Faults are injected into real objects against the real broker, as in test_worker_start_over.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import pairwise

import pytest
from prometheus_client import CollectorRegistry

from agents import worker_sla_scan
from agents.core import StepResult
from agents.rules import Rules, load_rules
from agents.sla import FOLLOW_UP
from agents.state import LeadState
from agents.worker import LeadWorker
from streams.backoff import backoff_seconds
from streams.metrics import Metrics
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import HOUR, demo_request, profile
from tests.integration.test_worker_start_over import _until_ready
from tests.integration.worker_harness import durable_states, running_worker, wait_until

pytestmark = pytest.mark.integration


def _fired(worker: LeadWorker, lead: str) -> list[str]:
    """The follow-up SLA levels fired for ``lead`` in the worker's store."""
    state = worker.store.get(lead.encode())
    timer = state.timers.get(FOLLOW_UP) if state is not None else None
    return timer.fired if timer is not None else []


def _failures(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("leadpulse_worker_sla_scan_failures_total") or 0.0


def _failing_leads(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("leadpulse_worker_sla_scan_failing_leads")


def _send_due_leads(settings: Settings, *leads: str) -> None:
    """Leads with a demo request two hours ago: their 1 h follow-up SLA (warning and breach) is due."""
    t = int(time.time() * 1000) - 2 * HOUR
    with Producer(settings) as producer:
        for lead in leads:
            producer.send("lead_identified", {**profile(lead, t), "event_time": t})
            producer.send("download", demo_request(lead, t + 60_000))


def _scanning_worker(settings: Settings, scan_interval_s: float) -> tuple[LeadWorker, Metrics]:
    """A worker scanning its timers every ``scan_interval_s``, with a fresh metrics registry to read."""
    metrics = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(settings, load_rules(None), metrics, scan_interval_s=scan_interval_s, idle_after_s=1)
    return worker, metrics


@asynccontextmanager
async def _running_with_due_leads(
    worker: LeadWorker, settings: Settings, *leads: str
) -> AsyncIterator[asyncio.Task[None]]:
    """The worker running and ready, then ``leads`` sent with their follow-up SLA due."""
    async with running_worker(worker) as running:
        await _until_ready(worker, running)
        _send_due_leads(settings, *leads)
        yield running


def test_a_lead_the_sla_scan_failed_for_once_gets_its_timers_back_after_the_reload(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``check_timers`` fails once for a lead (a failure that passes). The lead was left out of the scans
    until the process restarted: no SLA warning or breach for it, and no metric said so. Now it is scanned
    again after the back-off, on the state reloaded from the changelog, its timers fire and are written,
    and the failure is counted."""
    lead = "L-timer-once"
    real_check = worker_sla_scan.check_timers
    raised: list[str] = []

    def check_failing_once(state: LeadState, rules: Rules, now_ms: int) -> StepResult:
        if state.key == lead and not raised:
            raised.append(state.key)
            state.fit = 999.0  # what the call did before it failed: the reload drops it
            raise RuntimeError("injected: the SLA scan failed once for a lead")
        return real_check(state, rules, now_ms)

    monkeypatch.setattr(worker_sla_scan, "check_timers", check_failing_once)
    monkeypatch.setattr(worker_sla_scan, "RETRY_FIRST_S", 0.5, raising=False)
    worker, metrics = _scanning_worker(broker_settings, scan_interval_s=0.3)

    async def scenario() -> None:
        async with _running_with_due_leads(worker, broker_settings, lead) as running:
            await wait_until(lambda: bool(raised), running, timeout_s=60)
            await wait_until(
                lambda: len(_fired(worker, lead)) >= 2 and lead.encode() not in worker.scan_failed,
                running,
                timeout_s=60,
                seen=lambda: f"fired {_fired(worker, lead)}, failed {worker.scan_failed}",
            )

    asyncio.run(scenario())
    assert raised == [lead]
    assert _failures(metrics) == 1.0
    assert _failing_leads(metrics) == 0.0  # the retry worked: nothing waits any more
    durable = durable_states(broker_settings).get(lead.encode())
    timer = durable.timers.get(FOLLOW_UP) if durable is not None else None
    assert timer is not None and len(timer.fired) >= 2, "the lead's SLA firings were never written"
    assert durable is not None and durable.fit != 999.0


def test_a_lead_the_sla_scan_keeps_failing_for_is_retried_after_growing_back_offs(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lead whose scan fails for good is retried (each retry reloads the owned partitions), but never
    sooner than its back-off, which doubles up to a cap: not at every scan. Each failure is counted, and
    the other leads' timers fire meanwhile."""
    buggy, fine = "L-timer-always", "L-timer-fine2"
    first, cap = 0.3, 1.2
    real_check = worker_sla_scan.check_timers
    tried: list[float] = []

    def check_always_failing(state: LeadState, rules: Rules, now_ms: int) -> StepResult:
        if state.key == buggy:
            tried.append(time.monotonic())
            raise RuntimeError("injected: the SLA scan always fails for this lead")
        return real_check(state, rules, now_ms)

    monkeypatch.setattr(worker_sla_scan, "check_timers", check_always_failing)
    monkeypatch.setattr(worker_sla_scan, "RETRY_FIRST_S", first, raising=False)
    monkeypatch.setattr(worker_sla_scan, "RETRY_MAX_S", cap, raising=False)
    worker, metrics = _scanning_worker(broker_settings, scan_interval_s=0.1)

    async def scenario() -> None:
        async with _running_with_due_leads(worker, broker_settings, buggy, fine) as running:
            await wait_until(
                lambda: len(tried) >= 5 and len(_fired(worker, fine)) >= 2,
                running,
                timeout_s=60,
                seen=lambda: f"tried {len(tried)} times, fine fired {_fired(worker, fine)}",
            )
            failure = worker.scan_failed[buggy.encode()]
            assert failure.failures == len(tried)
            assert _failures(metrics) == len(tried)
            assert _failing_leads(metrics) == 1.0  # the buggy lead, not the fine one

    asyncio.run(scenario())
    gaps = [later - earlier for earlier, later in pairwise(tried)]
    wanted = [backoff_seconds(n, first, cap) for n in range(1, len(tried))]  # 0.3, 0.6, 1.2, 1.2, ...
    assert all(gap >= want for gap, want in zip(gaps, wanted, strict=True)), (gaps, wanted)


def test_many_leads_the_sla_scan_fails_for_do_not_hold_back_the_other_leads_timers(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A core bug makes ``check_timers`` raise for a whole class of leads. The scan stopped at the first
    failing lead and wrote nothing: one failing lead per scan. With the retries, a scan that met any lead out
    of its back-off was dropped, so once the failing leads outnumber the scans of one back-off (here 40 leads
    against a 2 s back-off and 0.1 s scans; in production 2 s scans and the 30 min cap: some 900 leads, fewer
    the longer a reload takes) every scan meets one and no other lead ever gets its SLA warning or breach.
    Now a failing lead is left out of the scan's writes and the rest is written: the healthy lead's timers
    fire on the first scan, and all failing leads are found in that one scan."""
    buggy = [f"L-timer-bug-{n:02d}" for n in range(40)]
    fine = "L-timer-healthy"
    real_check = worker_sla_scan.check_timers
    tried: list[str] = []

    def check_failing_for_a_class(state: LeadState, rules: Rules, now_ms: int) -> StepResult:
        if state.key.startswith("L-timer-bug-"):
            tried.append(state.key)
            raise RuntimeError("injected: the SLA scan fails for a whole class of leads")
        return real_check(state, rules, now_ms)

    monkeypatch.setattr(worker_sla_scan, "check_timers", check_failing_for_a_class)
    monkeypatch.setattr(worker_sla_scan, "RETRY_FIRST_S", 2.0, raising=False)
    monkeypatch.setattr(worker_sla_scan, "RETRY_MAX_S", 2.0, raising=False)
    worker, metrics = _scanning_worker(broker_settings, scan_interval_s=0.1)

    def durably_fired(lead: str) -> list[str]:
        """What the changelog says fired (the store in memory may hold a dropped scan's firings)."""
        state = durable_states(broker_settings).get(lead.encode())
        timer = state.timers.get(FOLLOW_UP) if state is not None else None
        return timer.fired if timer is not None else []

    async def scenario() -> None:
        async with _running_with_due_leads(worker, broker_settings, *buggy, fine) as running:
            deadline = time.monotonic() + 30
            while len(await asyncio.to_thread(durably_fired, fine)) < 2:
                assert not running.done()
                assert time.monotonic() < deadline, (
                    f"the healthy lead's SLA firings were never written; {len(tried)} scan failures of "
                    f"{len(set(tried))} leads, {_failures(metrics):.0f} counted"
                )
                await asyncio.sleep(0.5)
            assert set(tried) == set(buggy)

    asyncio.run(scenario())
    for lead in buggy:  # nothing the scan did for them is written
        assert durably_fired(lead) == []


def test_a_failing_lead_with_nothing_due_any_more_is_no_longer_counted_as_waiting(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lead the scan fails for, then followed up by sales: its follow-up SLA is met, nothing of it is due.
    Its retry entry stayed until a rebalance, so ``leadpulse_worker_sla_scan_failing_leads`` (the alert's
    signal) stayed at 1 for a lead with nothing to fire. Now the entry goes at the next scan."""
    lead = "L-timer-followed"
    real_check = worker_sla_scan.check_timers
    tried: list[str] = []

    def check_failing_for_the_lead(state: LeadState, rules: Rules, now_ms: int) -> StepResult:
        if state.key == lead:
            tried.append(state.key)
            raise RuntimeError("injected: the SLA scan fails for this lead")
        return real_check(state, rules, now_ms)

    monkeypatch.setattr(worker_sla_scan, "check_timers", check_failing_for_the_lead)
    monkeypatch.setattr(worker_sla_scan, "RETRY_FIRST_S", 600.0, raising=False)  # no retry in this test
    worker, metrics = _scanning_worker(broker_settings, scan_interval_s=0.1)

    async def scenario() -> None:
        async with _running_with_due_leads(worker, broker_settings, lead) as running:
            await wait_until(
                lambda: _failing_leads(metrics) == 1.0, running, seen=lambda: f"tried {len(tried)}"
            )
            with Producer(broker_settings) as producer:
                producer.send(
                    "sales_activity",
                    {
                        "event_id": "followed-accepted",
                        "event_time": int(time.time() * 1000) - 60_000,
                        "lead_id": lead,
                        "source": "crm",
                        "activity": "accepted",
                        "owner": "rep-1",
                    },
                )
            await wait_until(
                lambda: lead.encode() not in worker.scan_failed and _failing_leads(metrics) == 0.0,
                running,
                seen=lambda: f"failing {_failing_leads(metrics)}, entries {list(worker.scan_failed)}",
            )

    asyncio.run(scenario())
    assert tried == [lead]  # never retried: the entry went because nothing was due, not by a retry
