"""What a batch processed again after a start-over leaves behind: its metrics counted once, and a core that
raises for one event neither stops the worker nor lets a half-updated state reach the changelog.

Faults are injected into real objects against the real broker, as in test_worker_write_failures.py: one
state wave the broker does not acknowledge, or a ``step`` that updates a state in place and then raises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from agents.kafka_batches import BatchSender, Record, read_to_end
from agents.lead_store import LeadStore
from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.metrics import Metrics
from streams.producer import Producer
from streams.reader import Decoded, read_topic
from streams.settings import Settings
from tests.integration.test_worker import HOUR, demo_request, outputs, profile
from tests.integration.worker_harness import running_worker, wait_until

pytestmark = pytest.mark.integration


def _visit(lead: str, name: str, at: int) -> dict[str, Any]:
    return {
        "event_id": f"{lead}-{name}",
        "event_time": at,
        "lead_id": lead,
        "source": "web",
        "url": "https://x.example/pricing",
        "page_category": "pricing",
    }


def _durable(settings: Settings) -> LeadStore:
    """The lead states in the changelog (what a restart would restore)."""
    store = LeadStore()

    def apply(partition: int, key: bytes, value: bytes | None, _headers: Any) -> None:
        store.restore(partition, key, value, None)

    topic = settings.topic("leadpulse.internal.lead_state")
    asyncio.run(read_to_end(settings, topic, set(range(8)), True, apply))
    return store


def _dead_letters(settings: Settings) -> list[dict[str, Any]]:
    found = []
    for item in read_topic(settings, settings.topic("dlq"), idle_ms=300):
        assert isinstance(item, Decoded), item
        found.append(item.record)
    return found


def test_a_batch_processed_again_after_a_start_over_is_counted_once(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outputs wave acknowledged, the state wave not: the worker starts over and processes the batch
    again. Its records, outputs and dead letters were counted on each pass (consumed, hot leads, stage
    transitions and DLQ records twice)."""
    lead = "L-count"
    failed: list[bool] = []
    real_send = BatchSender.send
    state_topic = broker_settings.topic("leadpulse.internal.lead_state")

    async def state_wave_failing_once(self: BatchSender, records: Sequence[Record]) -> None:
        if not failed and any(topic == state_topic for topic, *_ in records):
            failed.append(True)
            raise KafkaTimeoutError("injected: the broker did not acknowledge the state wave in time")
        await real_send(self, records)

    monkeypatch.setattr(BatchSender, "send", state_wave_failing_once)
    metrics = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(broker_settings, load_rules(None), metrics, scan_interval_s=3600)
    now = int(time.time() * 1000)
    topics = [broker_settings.topic(t) for t in ("leads.profiles", "events.downloads", "events.web_visits")]

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await wait_until(lambda: worker.ready()[0], running, seen=lambda: "worker never became ready")
            with Producer(broker_settings) as producer:
                producer.send("lead_identified", profile(lead, now))
                producer.send("download", demo_request(lead, now - HOUR))
                producer.send_encoded(topics[2], lead, b"\x00not avro")
            await wait_until(
                lambda: bool(failed) and {tp.topic for tp in worker.committed} >= set(topics),
                running,
                timeout_s=30,
                seen=lambda: f"fault {failed}, committed {worker.committed}",
            )

    asyncio.run(scenario())
    hot = outputs(broker_settings)["hot_lead"]
    assert len({r["notification_id"] for r in hot}) == 1, hot

    def value(name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` that carry ``labels`` (0 when there is none)."""
        return sum(
            sample.value
            for family in metrics.registry.collect()
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    consumed = {
        t: value("leadpulse_events_consumed_total", topic=t)
        for t in ("leads.profiles", "events.downloads", "events.web_visits")
    }
    assert consumed == {"leads.profiles": 1.0, "events.downloads": 1.0, "events.web_visits": 1.0}
    assert value("leadpulse_hot_leads_total") == 1.0
    assert value("leadpulse_stage_transitions_total", from_stage="lead", to_stage="mql") == 1.0
    assert value("leadpulse_dlq_records_total", source_topic="events.web_visits", stage="decode") == 1.0
    assert value("leadpulse_events_invalid_total", topic="events.web_visits") == 1.0
    assert value("leadpulse_event_to_score_seconds_count") == 2.0
