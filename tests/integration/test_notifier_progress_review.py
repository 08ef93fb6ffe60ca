"""Review of the notifier's per-target progress (agents/notifier_progress.py): progress records must never
make a target skip a notification it is owed. Real broker, real receivers."""

from __future__ import annotations

import asyncio

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from agents.notifications import Notifier
from sinks.webhook import WebhookTarget
from streams.settings import Settings
from tests.integration.test_notifier_progress import (
    COUNT,
    HANG,
    first_run_with_one_target_hanging,
    second_run,
)
from tests.integration.test_webhooks import (
    Receiver,
    committed_total,
    hot_settings,  # noqa: F401 (fixture)
    receiver,  # noqa: F401 (fixture)
    start,
    wait_until,
)

pytestmark = pytest.mark.integration


def reset_offsets(settings: Settings, group: str, offset: int) -> None:
    """What `kafka-consumer-groups --reset-offsets --to-offset` does while the group is empty."""
    topic = settings.topic("leads.hot")
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(offset, "", -1) for p in parts})
    finally:
        consumer.close()


async def test_a_reset_to_earlier_offsets_re_sends_to_every_target_after_all_had_finished(
    hot_settings: Settings,  # noqa: F811
    receiver: tuple[Receiver, asyncio.Event],  # noqa: F811
) -> None:
    """docs/operations.md: a reset of the group's offsets re-sends to every target. The last progress record
    of a partition was the one written while json-0 hung (base 0, json-1 done with everything): once all
    was delivered nothing superseded it, and after a reset to 0 it applied again, so json-1 (the healthy
    target) was skipped for every notification the operator asked to have sent again."""
    state, release = receiver
    group = "n-progress-reset"
    await first_run_with_one_target_hanging(hot_settings, state, release, group)
    release.set()
    targets = [WebhookTarget("json-0", state.url + "/hang"), WebhookTarget("json-1", state.url + "/ok")]
    await second_run(hot_settings, targets, group, state)
    assert await asyncio.to_thread(committed_total, hot_settings, group) == COUNT
    await asyncio.to_thread(reset_offsets, hot_settings, group, 0)
    before = {key: len(bodies) for key, bodies in state.accepted.items()}  # json-0 may have some twice
    assert len(before) == 2 * COUNT

    notifier = Notifier(hot_settings, targets=targets, policy=HANG, group_id=group, concurrency=2)
    stop, task = await start(notifier)
    try:
        await wait_until(
            lambda: all(len(state.accepted[f"hang|hot-{n}"]) > before[f"hang|hot-{n}"] for n in range(COUNT)),
            30,
            "every notification at json-0 again",
        )
        await wait_until(lambda: notifier.pending.in_flight == 0, 30, "all deliveries finished")
        await asyncio.sleep(1.0)  # room for the commit loop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert {k: len(v) for k, v in state.accepted.items() if k.startswith("ok|")} == {
        f"ok|hot-{n}": 2 for n in range(COUNT)
    }
    assert await asyncio.to_thread(committed_total, hot_settings, group) == COUNT
