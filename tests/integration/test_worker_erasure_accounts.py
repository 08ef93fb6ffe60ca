"""Erasures and the accounts of the erased leads: an account that cannot be built for writing
(``NotWritable``) has its part of the erasure dead-lettered while the rest is done, instead of the worker
exiting; two erased leads of one account both leave it.

Faults are injected into real objects against the real broker, as in test_worker_start_over.py; the erasure
log is the real one (``streams.erasures.ErasureLog``), fed by ``publish_erasure`` like ``leadpulse forget``.
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
from streams.erasures import erasure_record, publish_erasure
from streams.metrics import Metrics
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import outputs, profile
from tests.integration.test_worker_start_over import _dead_letters, _seen, _visit
from tests.integration.worker_harness import durable_states, ready_with_erasures, wait_until

pytestmark = pytest.mark.integration

ACCOUNT = ACCOUNT_PREFIX + b"buyer.example"  # profile()'s company domain


def _durable_account(settings: Settings) -> AccountState | None:
    """The account's state in the changelog (what a restart would restore)."""
    return durable_states(settings).get_account(ACCOUNT)


def test_an_erasure_whose_account_cannot_be_encoded_is_dead_lettered_and_the_rest_of_it_done(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The account without the erased lead raises in its ``account_score`` encoding (a core bug). The
    erasure's ``NotWritable`` made the worker start over, and the reload's purge of erased leads raised it
    again, out of the poll loop: the worker exited (and a restart did the same). Now the lead's states are
    tombstoned as usual, the account part is dead-lettered (source the erasure log, stage ``process``,
    ``NotWritable``, the lead and the exception named; no value bytes, so ``dlq replay`` does not re-publish
    a re-built erasure over the log's record), and the worker goes on with other leads."""
    gone, stays, other = "L-erase-gone", "L-erase-stays", "L-erase-other"
    real_record = worker_batch.account_score_record
    raised: list[str] = []

    def record_with_a_bug(account: AccountState, computed_at: int) -> dict[str, Any]:
        if account.domain == "buyer.example" and gone not in account.leads and stays in account.leads:
            raised.append(account.domain)
            raise ValueError(
                "injected: the account without the erased lead holds a value the encoder refuses"
            )
        return real_record(account, computed_at)

    monkeypatch.setattr(worker_batch, "account_score_record", record_with_a_bug)
    metrics = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(broker_settings, load_rules(None), metrics, scan_interval_s=3600)
    now = int(time.time() * 1000)

    def account_leads() -> set[str]:
        account = worker.store.get_account(ACCOUNT)
        return set(account.leads) if account is not None else set()

    def erasures_dead_lettered() -> float:
        return (
            metrics.registry.get_sample_value(
                "leadpulse_dlq_records_total",
                {"source_topic": "leadpulse.internal.erasures", "stage": "process"},
            )
            or 0.0
        )

    async def scenario() -> None:
        async with ready_with_erasures(worker, broker_settings) as running:
            with Producer(broker_settings) as producer:
                producer.send("lead_identified", profile(gone, now))
                producer.send("lead_identified", profile(stays, now))
            await wait_until(lambda: account_leads() == {gone, stays}, running, timeout_s=30)
            await asyncio.to_thread(publish_erasure, broker_settings, erasure_record(gone, [], now))
            await wait_until(
                lambda: erasures_dead_lettered() >= 1 and gone.encode() not in worker.store,
                running,
                timeout_s=30,
                seen=lambda: f"raised {raised}, leads in memory {worker.store.lead_keys()}",
            )
            with Producer(broker_settings) as producer:  # the worker goes on
                producer.send("web_visit", {**_visit(other, "visit", now), "lead_id": other})
            await wait_until(lambda: _seen(worker, other, f"{other}-visit"), running, timeout_s=30)

    asyncio.run(scenario())
    assert raised, "the injected bug never ran"

    # A restart: the restore's purge of erased leads applies the erasure to the account again (a fixed
    # version would complete it here); it fails the same way, is dead-lettered again, and the worker goes on.
    # (`worker` and `metrics` are rebound: the helpers above read the new ones.)
    metrics = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(broker_settings, load_rules(None), metrics, scan_interval_s=3600)
    restarted = "L-erase-after-restart"

    async def restart() -> None:
        async with ready_with_erasures(worker, broker_settings) as running:
            with Producer(broker_settings) as producer:
                producer.send("web_visit", {**_visit(restarted, "visit", now), "lead_id": restarted})
            await wait_until(
                lambda: erasures_dead_lettered() >= 1 and _seen(worker, restarted, f"{restarted}-visit"),
                running,
                timeout_s=30,
            )
            assert account_leads() == {gone, stays}

    asyncio.run(restart())
    durable = durable_states(broker_settings)
    assert durable.get(gone.encode()) is None, "the erased lead's state was not tombstoned"
    assert durable.get(stays.encode()) is not None
    letters = [
        d for d in _dead_letters(broker_settings) if d["source_topic"].endswith("leadpulse.internal.erasures")
    ]
    assert letters, "the erasure's unwritten account left no dead letter"
    letter = letters[0]
    assert letter["stage"] == "process" and letter["error_type"] == "NotWritable", letter
    assert letter["key"] == gone.encode() and letter["value"] is None, letter
    assert gone in letter["error"] and "buyer.example" in letter["error"] and "injected" in letter["error"]
    scores = outputs(broker_settings)["account_score"]
    named = [{t["lead_id"] for t in r["top_leads"]} for r in scores]
    # Before the erasure the account is scored with both leads, or first with the erased one alone when the
    # two profiles fall in separate batches (timing; it failed a CI run as "leads == 2"). What may never be
    # written is the account the erasure could not build: the one that keeps `stays` without `gone`.
    assert {gone, stays} in named, named
    built_without_gone = [n for n in named if stays in n and gone not in n]
    assert not built_without_gone, "the account that could not be built was written"


def test_two_erased_leads_of_one_account_both_leave_it_in_the_same_erasure_batch(
    broker_settings: Settings,
) -> None:
    """Two leads of one account erased while no worker ran: the restarted worker's restore purges both in
    one batch. Each was taken out of the account as stored, so the second result (without the second lead)
    replaced the first (without the first): the account written, and its ``account_score`` output, still
    named the first erased lead. Now both leave it, in every account score written after the erasure."""
    first, second, stays = "L-two-a", "L-two-b", "L-two-stays"
    now = int(time.time() * 1000)

    def account_leads(worker: LeadWorker) -> set[str]:
        account = worker.store.get_account(ACCOUNT)
        return set(account.leads) if account is not None else set()

    async def run(worker: LeadWorker, until: Any) -> None:
        async with ready_with_erasures(worker, broker_settings) as running:
            await until(running)

    async def leads_scored(running: asyncio.Task[None]) -> None:
        with Producer(broker_settings) as producer:
            for lead in (first, second, stays):
                producer.send("lead_identified", profile(lead, now))
        await wait_until(lambda: account_leads(before) == {first, second, stays}, running, timeout_s=30)

    before = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
    asyncio.run(run(before, leads_scored))
    written_before = len(outputs(broker_settings)["account_score"])
    for lead in (first, second):
        publish_erasure(broker_settings, erasure_record(lead, [], now))

    async def erased(running: asyncio.Task[None]) -> None:
        await wait_until(lambda: account_leads(after) == {stays}, running, timeout_s=30)

    after = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
    asyncio.run(run(after, erased))
    written = outputs(broker_settings)["account_score"][written_before:]
    assert written, "no account score written after the erasures"
    named = [[t["lead_id"] for t in record["top_leads"]] for record in written]
    assert all(first not in leads and second not in leads for leads in named), named
    account = _durable_account(broker_settings)
    assert account is not None and set(account.leads) == {stays}
