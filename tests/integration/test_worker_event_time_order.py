"""Across topics, the worker applies a lead's events in event-time order, not in the order it consumed them.

DESIGN §2: "Transitions are driven by event time, not arrival time", and disqualified leads are never
notified. One lead's profile and downloads are on different topics, so they can arrive in either order; in a
backlog (a restart, a replay, a slow topic) the two topics are read far apart. Here both leads' records are
produced the wrong way round before the worker starts (so they are in one batch):

- ``BEFORE``: disqualified (competitor) at t, catalog download at t+1 min, the download produced first →
  never hot;
- ``AFTER``: catalog download at t+1 min, disqualified at t+2 min, the profile produced first → hot at
  t+1 min (it was not known to be a competitor yet), then disqualified.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import pytest

from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import HOUR, outputs, profile
from tests.integration.worker_harness import running_worker, stages, wait_until

pytestmark = pytest.mark.integration


def _catalog_download(lead: str, at: int) -> dict[str, Any]:
    return {
        "event_id": f"{lead}-download",
        "event_time": at,
        "lead_id": lead,
        "source": "web",
        "content_id": "catalog-2026",
        "asset_type": "catalog",
    }


def _competitor(lead: str, at: int) -> dict[str, Any]:
    return {**profile(lead, at), "event_time": at, "flags": ["competitor"]}


def test_profile_and_download_are_applied_in_event_time_order_whatever_order_they_arrive_in(
    broker_settings: Settings,
) -> None:
    t = int(time.time() * 1000) - HOUR
    with Producer(broker_settings) as producer:
        producer.send("download", _catalog_download("BEFORE", t + 60_000))
        producer.send("lead_identified", _competitor("BEFORE", t))
        producer.send("lead_identified", _competitor("AFTER", t + 120_000))
        producer.send("download", _catalog_download("AFTER", t + 60_000))

    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            both = functools.partial(stages, worker, "BEFORE", "AFTER")
            await wait_until(lambda: both() == ("disqualified", "disqualified"), running, seen=both)

    asyncio.run(scenario())
    out = outputs(broker_settings)
    assert [h["lead_id"] for h in out["hot_lead"]] == ["AFTER"]
    paths = {
        lead: [(tr["from_stage"], tr["to_stage"]) for tr in out["stage_transition"] if tr["lead_id"] == lead]
        for lead in ("BEFORE", "AFTER")
    }
    assert paths["BEFORE"] == [("awareness", "lead"), ("lead", "disqualified")]
    assert paths["AFTER"] == [("awareness", "lead"), ("lead", "mql"), ("mql", "disqualified")]
