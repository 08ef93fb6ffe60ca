"""A follow-up that came after its SLA deadline breaches on the real worker, even with no scan in between.

DESIGN §4: sales must record a follow-up within N hours, else a breach. Found black-box: a demo request
(1 h follow-up) and a first_touch 2 h later, produced together before the worker reads them, land in one
batch; the touch stopped the clock before any scan saw it due, so no warning and no breach were emitted,
while the same two records a scan apart gave both. The clock now fires what fell due before the answer.
``ONTIME`` is answered 20 min in: no SLA event at all.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import HOUR, demo_request, outputs
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
