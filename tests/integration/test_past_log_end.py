"""A group offset past the log end (a topic recreated or truncated while the group kept its offsets) is
logged, not silent.

Kafka answers a fetch past the log end with OFFSET_OUT_OF_RANGE and the consumer starts over at the earliest
offset. Tansu 0.6 answers with no records: the worker read nothing from the partition until the new log
passed the old offset, and ``leadpulse_consumer_lag`` showed 0. ``streams.metrics.consumer_lags`` (the lag
report of the worker, the sink and the notifier) now warns, naming the partition and both offsets.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from agents.rules import load_rules
from agents.worker import LeadWorker
from agents.worker_clients import GROUP
from streams.metrics import Metrics
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.worker_harness import running_worker, wait_until
from tests.unit.builders import visit

pytestmark = pytest.mark.integration

PAST = 100


def test_a_group_offset_past_the_log_end_is_logged_with_the_partition_and_both_offsets(
    broker_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    visits = broker_settings.topic("events.web_visits")
    now = int(time.time() * 1000)
    with Producer(broker_settings) as producer:
        for i in range(3):
            producer.send(*visit("L-1", now, event_id=f"v{i}"))

    async def commit_past_the_end() -> int:
        """The worker group's offset set to ``PAST`` on every partition of the visits topic (as a group that
        read an earlier, longer log of the same name left it); returns the partition holding the visits."""
        member = AIOKafkaConsumer(
            bootstrap_servers=broker_settings.bootstrap,
            group_id=broker_settings.topic_prefix + GROUP,
            enable_auto_commit=False,
        )
        await member.start()
        try:
            partitions = [
                TopicPartition(visits, p) for p in sorted(member.partitions_for_topic(visits) or ())
            ]
            member.assign(partitions)
            ends = await member.end_offsets(partitions)
            await member.commit({tp: OffsetAndMetadata(PAST, "") for tp in partitions})
            return next(tp.partition for tp, end in ends.items() if end > 0)
        finally:
            await member.stop()

    holding = asyncio.run(commit_past_the_end())
    worker = LeadWorker(
        broker_settings, load_rules(None), metrics=Metrics(CollectorRegistry(), component="worker")
    )
    wanted = f"events.web_visits[{holding}]: the group's offset {PAST} is past the log end 3"

    def warned() -> bool:
        return any(wanted in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await wait_until(warned, running, timeout_s=60, seen=lambda: caplog.text[-3000:])

    with caplog.at_level(logging.WARNING, logger="streams.metrics"):
        asyncio.run(scenario())
    assert warned()
