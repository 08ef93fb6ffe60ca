"""The dead letter of an erasure the worker cannot complete (an account that cannot be built for writing):
written once per worker process, however many times its restores (start, reload, rebalance) apply the
erasure again, and counted as a dead letter, not as an invalid input record.

Faults are injected into real objects against the real broker, as in test_worker_erasure_accounts.py; the
erasure log is the real one (``streams.erasures.ErasureLog``), fed by ``publish_erasure`` like ``forget``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agents import worker_batch
from agents.account import AccountState
from agents.lead_store import ACCOUNT_PREFIX
from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.erasures import erasure_id, erasure_record, publish_erasure
from streams.metrics import Metrics
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import profile
from tests.integration.test_worker_start_over import _dead_letters, _seen, _visit
from tests.integration.worker_harness import ready_with_erasures, wait_until

pytestmark = pytest.mark.integration

ACCOUNT = ACCOUNT_PREFIX + b"buyer.example"  # profile()'s company domain
ERASURES = "leadpulse.internal.erasures"


def _sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _letters(metrics: Metrics) -> float:
    return _sample(metrics, "leadpulse_dlq_records_total", {"source_topic": ERASURES, "stage": "process"})


def _invalid(metrics: Metrics) -> float:
    return _sample(metrics, "leadpulse_events_invalid_total", {"topic": ERASURES, "reason": "process_error"})


def test_an_incomplete_erasure_is_dead_lettered_once_per_process_and_not_counted_as_invalid_input(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each restore applies an incomplete erasure again (``purge_erased``) and fails the same way: a reload
    wrote the letter again, a start twice (the restore's purge, then the erasure log's first drain), and each
    counted in ``leadpulse_events_invalid_total{topic="leadpulse.internal.erasures"}`` (the invalid-input
    alert's numerator), though no input record was invalid. Now a process writes it once (same key and
    event id, the erasure's, in every process) and counts it only in ``leadpulse_dlq_records_total``."""
    gone, stays = "L-letter-gone", "L-letter-stays"
    real_record = worker_batch.account_score_record

    def record_with_a_bug(account: AccountState, computed_at: int) -> dict[str, Any]:
        if account.domain == "buyer.example" and gone not in account.leads and stays in account.leads:
            raise ValueError(
                "injected: the account without the erased lead holds a value the encoder refuses"
            )
        return real_record(account, computed_at)

    monkeypatch.setattr(worker_batch, "account_score_record", record_with_a_bug)
    now = int(time.time() * 1000)

    def account_leads(worker: LeadWorker) -> set[str]:
        account = worker.store.get_account(ACCOUNT)
        return set(account.leads) if account is not None else set()

    async def goes_on(worker: LeadWorker, running: asyncio.Task[None], lead: str) -> None:
        """A visit of ``lead`` processed: the poll loop went round after whatever came before."""
        with Producer(broker_settings) as producer:
            producer.send("web_visit", {**_visit(lead, "visit", now), "lead_id": lead})
        await wait_until(lambda: _seen(worker, lead, f"{lead}-visit"), running, timeout_s=30)

    first = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(broker_settings, load_rules(None), first, scan_interval_s=3600)

    async def erased_then_reloaded() -> None:
        async with ready_with_erasures(worker, broker_settings) as running:
            with Producer(broker_settings) as producer:
                producer.send("lead_identified", profile(gone, now))
                producer.send("lead_identified", profile(stays, now))
            await wait_until(lambda: account_leads(worker) == {gone, stays}, running, timeout_s=30)
            await asyncio.to_thread(publish_erasure, broker_settings, erasure_record(gone, [], now))
            await wait_until(lambda: _letters(first) >= 1, running, timeout_s=30)
            worker.start_over(RuntimeError("injected: reload from the changelog"))  # a restore, same process
            await wait_until(lambda: not worker.reload_pending, running, timeout_s=30)
            await goes_on(worker, running, "L-letter-after-reload")

    asyncio.run(erased_then_reloaded())
    assert (_letters(first), _invalid(first)) == (1.0, 0.0)

    second = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(broker_settings, load_rules(None), second, scan_interval_s=3600)

    async def restarted() -> None:
        async with ready_with_erasures(worker, broker_settings) as running:
            await goes_on(worker, running, "L-letter-after-restart")
            assert account_leads(worker) == {gone, stays}  # still not complete: the bug is still there

    asyncio.run(restarted())
    assert (_letters(second), _invalid(second)) == (1.0, 0.0)
    letters = [d for d in _dead_letters(broker_settings) if d["source_topic"].endswith(ERASURES)]
    assert [(d["key"], d["event_id"]) for d in letters] == 2 * [(gone.encode(), erasure_id(gone))], letters
