"""The worker when the broker does not take what it must read or write: it backs off and starts over from
what is durable, never processing on a partial state and never exiting.

Faults are injected into real objects against the real broker: the changelog read of an assignment fails
once (a broker blip while partitions are assigned), or one wave of a batch's acknowledged writes fails (what
aiokafka raises when the broker stays away past the producer's request timeout).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from agents import worker_rebalance
from agents.kafka_batches import BatchSender, Record
from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import HOUR, demo_request, outputs, profile
from tests.integration.worker_harness import durable_states, running_worker, wait_until

pytestmark = pytest.mark.integration


def _visit(lead: str, at: int) -> dict[str, Any]:
    return {
        "event_id": f"{lead}-visit",
        "event_time": at,
        "lead_id": lead,
        "source": "web",
        "url": "https://x.example/pricing",
        "page_category": "pricing",
    }


def _seen(worker: LeadWorker, lead: str, event_id: str) -> bool:
    state = worker.store.get(lead.encode())
    return state is not None and event_id in state.seen


async def _hot_lead(settings: Settings, lead: str) -> None:
    """A worker that makes ``lead`` an MQL (profile + demo request), then stops."""
    now = int(time.time() * 1000)
    worker = LeadWorker(settings, load_rules(None), scan_interval_s=3600)
    async with running_worker(worker) as running:
        await wait_until(lambda: worker.ready()[0], running, seen=lambda: "worker never became ready")
        with Producer(settings) as producer:
            producer.send("lead_identified", profile(lead, now))
            producer.send("download", demo_request(lead, now - HOUR))
        await wait_until(lambda: _seen(worker, lead, f"{lead}-demo"), running, timeout_s=20)


def test_a_changelog_read_that_fails_on_assignment_is_retried_before_any_record_is_processed(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka logs and swallows a rebalance listener's exception: the worker then processed records on the
    empty store, and the lead's next event rebuilt its state from nothing (stage, score and seen ids lost)."""
    lead = "L-restore"
    real_read = worker_rebalance.read_changelog
    failures: list[int] = []

    async def read_failing_once(worker: LeadWorker, partitions: set[int]) -> None:
        if not failures:
            failures.append(len(partitions))
            raise KafkaConnectionError("injected: the broker did not answer the changelog read")
        await real_read(worker, partitions)

    async def scenario() -> None:
        await _hot_lead(broker_settings, lead)
        monkeypatch.setattr(worker_rebalance, "read_changelog", read_failing_once)
        worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
        async with running_worker(worker) as running:
            await wait_until(lambda: worker.generation > 0, running, seen=lambda: "never assigned")
            with Producer(broker_settings) as producer:
                producer.send("web_visit", _visit(lead, int(time.time() * 1000)))
            await wait_until(lambda: _seen(worker, lead, f"{lead}-visit"), running, timeout_s=20)
            state = worker.store.get(lead.encode())
            assert failures, "the injected fault never ran"
            assert state is not None and f"{lead}-demo" in state.seen, "processed on a partial store"
            assert state.stage == "mql"

    asyncio.run(scenario())
    moves = [(t["from_stage"], t["to_stage"]) for t in outputs(broker_settings)["stage_transition"]]
    assert len(moves) == len(set(moves)), f"a stage move emitted twice: {moves}"


@pytest.mark.parametrize("wave", ["leads.hot", "leadpulse.internal.lead_state"])
def test_a_batch_whose_writes_the_broker_does_not_take_is_processed_again_after_a_back_off(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch, wave: str
) -> None:
    """A wave of writes not acknowledged (outputs, or states) raised out of the poll loop and the worker
    exited: a crash, and with the broker still away at the restart, a crash loop. Starting over from what
    is durable matters too: the states in memory already count the batch's events as seen, so a retry from
    them would never emit the hot lead."""
    lead = "L-write"
    failed: list[str] = []
    real_send = BatchSender.send

    async def send_failing_once(self: BatchSender, records: Sequence[Record]) -> None:
        if not failed and any(topic == broker_settings.topic(wave) for topic, *_ in records):
            failed.append(wave)
            raise KafkaTimeoutError("injected: the broker did not acknowledge the batch in time")
        await real_send(self, records)

    monkeypatch.setattr(BatchSender, "send", send_failing_once)
    now = int(time.time() * 1000)
    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await wait_until(lambda: worker.ready()[0], running, seen=lambda: "worker never became ready")
            with Producer(broker_settings) as producer:
                producer.send("lead_identified", profile(lead, now))
                producer.send("download", demo_request(lead, now - HOUR))
            downloads = broker_settings.topic("events.downloads")
            await wait_until(
                lambda: bool(failed) and any(tp.topic == downloads for tp in worker.committed),
                running,
                timeout_s=20,
                seen=lambda: f"fault {failed}, committed {worker.committed}",
            )

    asyncio.run(scenario())
    hot = {r["notification_id"] for r in outputs(broker_settings)["hot_lead"]}
    assert len(hot) == 1, f"hot leads emitted: {hot}"
    durable = durable_states(broker_settings)
    state = durable.get(lead.encode())
    assert state is not None and state.stage == "mql" and f"{lead}-demo" in state.seen
