"""``late_by_arrival``: the real worker judges lateness by the Kafka record timestamp, not by the lead alone.

A backfill (an import of old CRM or web history) produces events today whose event times are days old. Each
lead's first event is not late against the lead's own clock, so by default an old demo request notifies and
its one-hour SLA breaches at the next scan. With ``late_by_arrival: true`` the record timestamp (when the
event entered Kafka) shows it arrived days late: it is scored and moves the stage, but notifies nobody and
starts no SLA clock (DESIGN §3). A live lead in the same run is notified, and its SLA warning fires, which
shows the timer scan ran. (The default, lateness against the lead's own newest event, is unit-tested.)
"""

from __future__ import annotations

import asyncio
import functools
import time

import pytest
import yaml

from agents.rules import DEFAULT_RULES_PATH, Rules
from agents.worker import LeadWorker
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import DAY, demo_request, outputs
from tests.integration.worker_harness import running_worker, stages, wait_until

pytestmark = pytest.mark.integration
MINUTE = 60_000


def test_a_backfilled_demo_request_is_scored_but_notifies_nobody(broker_settings: Settings) -> None:
    now = int(time.time() * 1000)
    with Producer(broker_settings) as producer:
        producer.send("download", demo_request("BACKFILLED", now - 5 * DAY))
        producer.send("download", demo_request("LIVE", now - 40 * MINUTE))  # SLA warning due at -10 min
        # The timer scan's clock is event time (the newest seen, plus the wall time since): bring it to now.
        clock = {"event_id": "clock", "event_time": now, "lead_id": "CLOCK", "source": "web", "url": "/"}
        producer.send("web_visit", clock)

    data = yaml.safe_load(DEFAULT_RULES_PATH.read_text())
    rules = Rules.model_validate({**data, "late_by_arrival": True})
    worker = LeadWorker(broker_settings, rules, scan_interval_s=0.2)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            both = functools.partial(stages, worker, "BACKFILLED", "LIVE")
            await wait_until(lambda: both() == ("mql", "mql"), running, seen=both)
            await asyncio.sleep(2)  # ten timer scans: a started clock would have fired by now

    asyncio.run(scenario())
    out = outputs(broker_settings)
    assert [h["lead_id"] for h in out["hot_lead"]] == ["LIVE"]
    assert [(t["lead_id"], t["level"]) for t in out["sla_timeout"]] == [("LIVE", "warning")]
    backfilled = [s for s in out["lead_score"] if s["lead_id"] == "BACKFILLED"]
    assert backfilled[-1]["stage"] == "mql" and "late event" in backfilled[-1]["change_reason"]
