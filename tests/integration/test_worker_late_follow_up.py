"""A follow-up that came after its SLA deadline breaches on the real worker, even with no scan in between.

DESIGN §4: sales must record a follow-up within N hours, else a breach. Found black-box: a demo request
(1 h follow-up) and a first_touch 2 h later, produced together before the worker reads them, land in one
batch; the touch stopped the clock before any scan saw it due, so no warning and no breach were emitted,
while the same two records a scan apart gave both. The clock now fires what fell due before the answer.
``ONTIME`` is answered 20 min in: no SLA event at all.

The same when the worker reads the follow-up first, in an earlier batch than the demo request it answers
(sales activities come on their own topic): before, the clock was then never started, however late the
answer (report audit).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from agents.rules import load_rules
from agents.state import LeadState
from agents.worker import LeadWorker
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import HOUR, demo_request, outputs, profile
from tests.integration.worker_harness import running_worker, wait_until
from tests.unit.builders import activity

pytestmark = pytest.mark.integration
MINUTE = 60_000


def _first_touch(lead: str, at: int) -> dict[str, Any]:
    return activity("first_touch", lead, at, event_id=f"{lead}-touch")[1]


def test_a_follow_up_after_the_deadline_breaches_in_one_batch(broker_settings: Settings) -> None:
    mql_at = int(time.time() * 1000) - 5 * HOUR
    with Producer(broker_settings) as producer:
        producer.send("download", demo_request("LATE", mql_at))
        producer.send("sales_activity", _first_touch("LATE", mql_at + 2 * HOUR))
        producer.send("download", demo_request("ONTIME", mql_at))
        producer.send("sales_activity", _first_touch("ONTIME", mql_at + 20 * MINUTE))

    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)  # no scan: the batch decides

    def answered() -> bool:
        states = [worker.store.get(lead) for lead in (b"LATE", b"ONTIME")]
        return all(s is not None and s.last_follow_up_at is not None for s in states)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await wait_until(answered, running)

    asyncio.run(scenario())
    fired = outputs(broker_settings)["sla_timeout"]
    assert sorted((t["lead_id"], t["level"]) for t in fired) == [("LATE", "breach"), ("LATE", "warning")]
    breach = next(t for t in fired if t["level"] == "breach")
    assert (breach["sla"], breach["started_at"], breach["due_at"]) == (
        "hot_lead_follow_up",
        mql_at,
        mql_at + HOUR,
    )


def test_a_late_follow_up_read_before_its_mql_still_breaches(broker_settings: Settings) -> None:
    mql_at = int(time.time() * 1000) - 5 * HOUR
    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)  # no scan: the core decides

    def state(lead: bytes, ready: Callable[[LeadState], bool]) -> Callable[[], bool]:
        return lambda: (s := worker.store.get(lead)) is not None and ready(s)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            with Producer(broker_settings) as producer:  # known 3 h before, answered 2 h after the MQL
                producer.send("lead_identified", profile("FIRST", mql_at))
                producer.send("sales_activity", _first_touch("FIRST", mql_at + 2 * HOUR))
            await wait_until(state(b"FIRST", lambda s: s.last_follow_up_at is not None), running)
            with Producer(broker_settings) as producer:  # the demo request it answers, read in a later batch
                producer.send("download", demo_request("FIRST", mql_at))
            await wait_until(state(b"FIRST", lambda s: s.stage == "mql"), running)
            stored = worker.store.get(b"FIRST")
            assert stored is not None and stored.timers == {}  # no clock left running

    asyncio.run(scenario())
    found = outputs(broker_settings)
    assert [h["sla_due_at"] for h in found["hot_lead"]] == [mql_at + HOUR]
    fired = found["sla_timeout"]
    assert [(t["level"], t["timeout_id"], t["due_at"]) for t in fired] == [
        ("warning", f"FIRST:hot_lead_follow_up:warning:{mql_at}", mql_at + HOUR),
        ("breach", f"FIRST:hot_lead_follow_up:breach:{mql_at}", mql_at + HOUR),
    ]
