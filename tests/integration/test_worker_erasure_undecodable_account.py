"""An account state in the changelog that does not decode (a core bug, or a state written by another
version) and the erasure pass that decodes every account: the worker neither exits at an erasure nor at
each restore (a crash loop), and the other accounts' erasures are done.

Faults are injected into real objects against the real broker, as in test_worker_start_over.py; the erasure
log is the real one (``streams.erasures.ErasureLog``), fed by ``publish_erasure`` like ``leadpulse forget``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from agents.lead_store import ACCOUNT_PREFIX
from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.erasures import erasure_record, publish_erasure
from streams.metrics import Metrics
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import profile
from tests.integration.test_worker_start_over import _seen, _visit
from tests.integration.worker_harness import ready_with_erasures, wait_until

pytestmark = pytest.mark.integration

ACCOUNT = ACCOUNT_PREFIX + b"buyer.example"  # profile()'s company domain
BROKEN = ACCOUNT_PREFIX + b"broken.example"
Scenario = Callable[[LeadWorker, asyncio.Task[None]], Awaitable[None]]


def test_an_account_state_that_does_not_decode_neither_stops_erasures_nor_crash_loops_the_worker(
    broker_settings: Settings,
) -> None:
    """``purge_erased`` (every restore: start, rebalance, reload) and ``apply_erasures`` (every erasure)
    decode every account of the owned partitions at once, outside any guard: one account state that does
    not decode raised out of the restore, the worker exited, and at each restart it did again; an erasure
    published while it ran did the same. Now such an account is left out of the erasure pass (logged; its own
    hops are dead-lettered by the per-record guard as for any state that does not decode), the erasure is
    done for the other accounts and the worker goes on."""
    gone, stays, other = "L-undec-gone", "L-undec-stays", "L-undec-other"
    now = int(time.time() * 1000)
    with Producer(broker_settings) as producer:  # what a restore reads first: an account it cannot decode
        producer.send_encoded(broker_settings.topic("leadpulse.internal.lead_state"), BROKEN, b'{"leads": 1')

    def metrics() -> Metrics:
        return Metrics(CollectorRegistry(), component="worker")

    def run_once(worker: LeadWorker, scenario_in: Scenario) -> None:
        async def scenario() -> None:
            async with ready_with_erasures(worker, broker_settings) as running:
                await scenario_in(worker, running)

        asyncio.run(scenario())

    def account_leads(worker: LeadWorker) -> set[str]:
        account = worker.store.get_account(ACCOUNT)
        return set(account.leads) if account is not None else set()

    async def erase_while_running(worker: LeadWorker, running: asyncio.Task[None]) -> None:
        with Producer(broker_settings) as producer:
            producer.send("lead_identified", profile(gone, now))
            producer.send("lead_identified", profile(stays, now))
        await wait_until(lambda: account_leads(worker) == {gone, stays}, running, timeout_s=30)
        await asyncio.to_thread(publish_erasure, broker_settings, erasure_record(gone, [], now))
        await wait_until(
            lambda: account_leads(worker) == {stays} and gone.encode() not in worker.store,
            running,
            timeout_s=30,
            seen=lambda: f"account {account_leads(worker)}, leads {worker.store.lead_keys()}",
        )

    run_once(LeadWorker(broker_settings, load_rules(None), metrics()), erase_while_running)

    async def goes_on_after_a_restart(worker: LeadWorker, running: asyncio.Task[None]) -> None:
        with Producer(broker_settings) as producer:
            producer.send("web_visit", {**_visit(other, "visit", now), "lead_id": other})
        await wait_until(lambda: _seen(worker, other, f"{other}-visit"), running, timeout_s=30)
        assert account_leads(worker) == {stays}

    run_once(LeadWorker(broker_settings, load_rules(None), metrics()), goes_on_after_a_restart)
