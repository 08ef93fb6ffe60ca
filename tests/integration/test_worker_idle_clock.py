"""SLA timers after a replay with no live traffic since: once caught up, the timer clock is the wall clock.

While a backlog of old events is processed, the timer clock is held back to the newest event time (so a
follow-up still in the backlog is not reported as missed). Here a demo request from two hours ago (an
immediate MQL: 1 h follow-up SLA, warning at 30 min) is the only event. Held back, its SLA is not due; once
the worker has been caught up for ``idle_after_s``, the warning and the breach fire.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from agents.rules import load_rules
from agents.sla import FOLLOW_UP
from agents.state import SlaTimer
from agents.worker import LeadWorker
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import HOUR, outputs, profile
from tests.integration.worker_harness import running_worker, wait_until

pytestmark = pytest.mark.integration


def test_sla_of_a_replayed_mql_fires_once_the_worker_is_caught_up(broker_settings: Settings) -> None:
    t = int(time.time() * 1000) - 2 * HOUR
    with Producer(broker_settings) as producer:
        producer.send("lead_identified", {**profile("REPLAYED", t), "event_time": t})
        producer.send(
            "download",
            {
                "event_id": "REPLAYED-demo",
                "event_time": t + 60_000,
                "lead_id": "REPLAYED",
                "source": "web",
                "content_id": "demo",
                "asset_type": "demo_request",
            },
        )

    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=0.3, idle_after_s=5)

    def follow_up() -> SlaTimer | None:
        state = worker.store.get(b"REPLAYED")
        return state.timers.get(FOLLOW_UP) if state is not None and state.stage == "mql" else None

    async def scenario() -> None:
        async with running_worker(worker) as running:
            started = time.monotonic()
            await wait_until(lambda: follow_up() is not None, running)
            timer = follow_up()
            assert timer is not None and timer.due_at < time.time() * 1000  # due by the wall clock ...
            await asyncio.sleep(1.0)  # ... but held back: a few scans later nothing has fired
            assert timer.fired == []
            # caught up for 5 s: the wall clock applies
            await wait_until(lambda: len(timer.fired) >= 2, running, 60 - (time.monotonic() - started))

    asyncio.run(scenario())
    fired = outputs(broker_settings)["sla_timeout"]
    assert sorted(f["level"] for f in fired) == ["breach", "warning"]
    assert {f["lead_id"] for f in fired} == {"REPLAYED"}
    assert {f["sla"] for f in fired} == {"hot_lead_follow_up"}
