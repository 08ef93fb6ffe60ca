"""A restarted worker reports the group's real lag, not every partition's whole log.

Found black-box (ops audit): after a restart with nothing new to read, ``leadpulse_consumer_lag`` summed
4,567 over 64 partitions, each partition's log end, because the worker knew only the offsets it had
committed itself. That fed ``LeadpulseConsumerLagGrowing``, the lag panel and the autoscaler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.metrics import Metrics
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import HOUR, demo_request
from tests.integration.worker_harness import running_worker, wait_until

pytestmark = pytest.mark.integration


def lag_series(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["topic"], sample.labels["partition"]): sample.value
        for family in metrics.registry.collect()
        if family.name == "leadpulse_consumer_lag"
        for sample in family.samples
    }


def test_a_restarted_worker_with_nothing_new_reports_no_lag(broker_settings: Settings) -> None:
    leads = [f"LAG-{i}" for i in range(24)]
    at = int(time.time() * 1000) - HOUR
    with Producer(broker_settings) as producer:
        for lead in leads:
            producer.send("download", demo_request(lead, at))

    def run(worker: LeadWorker, done: Callable[[], bool]) -> None:
        async def scenario() -> None:
            async with running_worker(worker) as running:
                await wait_until(done, running, timeout_s=60)

        asyncio.run(scenario())

    first = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
    run(first, lambda: all(first.store.get(lead.encode()) is not None for lead in leads))

    metrics = Metrics(CollectorRegistry(), component="worker")
    again = LeadWorker(broker_settings, load_rules(None), metrics=metrics, scan_interval_s=3600)
    downloads = "events.downloads"
    # the lag is reported every 5 s once partitions are assigned and fetched
    run(again, lambda: any(topic == downloads for topic, _ in lag_series(metrics)))
    lags = lag_series(metrics)
    assert {partition for topic, partition in lags if topic == downloads} == {str(p) for p in range(8)}
    assert sum(lags.values()) == 0, {k: v for k, v in lags.items() if v}
