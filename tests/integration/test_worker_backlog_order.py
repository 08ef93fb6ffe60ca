"""A backlog is processed in the order it was produced across topics, not in the order fetches return it.

Found black-box (ops audit): a worker catching up on a 3,000-lead backlog lost 58% of the planned hot leads
(0% live). A lead's demo request sat deep in ``events.downloads`` behind other traffic, while the rep's
``accepted`` on ``sales.activities`` came back in the first fetch: the lead went to ``sal`` before the demo
request was read, so it never became an MQL and nobody was notified. Here a partition of
``events.downloads`` holds more than one fetch (4 MB) of other traffic before the demo requests; the
activities answering them are on the same partition number of ``sales.activities``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.partitioner import partition_of
from streams.producer import Producer
from streams.settings import Settings
from streams.topics import INPUTS
from tests.integration.test_worker import HOUR, demo_request, outputs
from tests.integration.worker_harness import running_worker, wait_until
from tests.unit.builders import activity

pytestmark = pytest.mark.integration

FILLER = 40_000  # ~9 MB of downloads on one partition: more than one 4 MB fetch
LEADS = 8


def _same_partition(prefix: str, partition: int, count: int, partitions: int) -> list[str]:
    """Lead ids whose key lands on ``partition`` (the SDK's murmur2 partitioner)."""
    found, n = [], 0
    while len(found) < count:
        lead = f"{prefix}{n}"
        if partition_of(lead.encode(), partitions) == partition:
            found.append(lead)
        n += 1
    return found


def _accepted(lead: str, at: int) -> dict[str, Any]:
    return activity("accepted", lead, at, event_id=f"{lead}-accepted")[1]


def test_answers_read_before_the_demo_requests_they_answer_still_follow_them(
    broker_settings: Settings,
) -> None:
    partitions = next(spec.partitions for spec in INPUTS if spec.name == "events.downloads")
    filler_lead = "BACKLOG-FILLER"
    partition = partition_of(filler_lead.encode(), partitions)
    leads = _same_partition("BACKLOG-", partition, LEADS, partitions)
    start = int(time.time() * 1000) - 6 * HOUR
    padding = "x" * 120
    with Producer(broker_settings) as producer:
        for i in range(FILLER):  # other traffic first (a whitepaper lead: capped, never hot)
            producer.send(
                "download",
                {
                    "event_id": f"filler-{i}",
                    "event_time": start + i,
                    "lead_id": filler_lead,
                    "source": "web",
                    "content_id": f"whitepaper-{padding}",
                    "asset_type": "whitepaper",
                },
            )
        producer.flush()
        for n, lead in enumerate(leads):  # then, as it happened: each demo request, then its acceptance
            at = start + HOUR + n * 60_000
            producer.send("download", demo_request(lead, at))
            producer.flush()
            producer.send("sales_activity", _accepted(lead, at + 10 * 60_000))
            producer.flush()

    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)

    def settled() -> bool:
        states = [worker.store.get(lead.encode()) for lead in leads]
        return all(s is not None and s.stage == "sal" for s in states)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await wait_until(settled, running, timeout_s=120, seen=lambda: len(worker.store))

    asyncio.run(scenario())
    found = outputs(broker_settings)
    moves = {lead: [] for lead in leads}
    for t in found["stage_transition"]:
        if t["lead_id"] in moves:
            moves[t["lead_id"]].append((t["occurred_at"], t["from_stage"], t["to_stage"]))
    for lead, seen in moves.items():
        assert [(src, dst) for _, src, dst in sorted(seen)][-2:] == [("lead", "mql"), ("mql", "sal")], (
            lead,
            seen,
        )
    assert sorted(h["lead_id"] for h in found["hot_lead"]) == sorted(leads)
