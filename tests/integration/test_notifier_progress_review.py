"""Review of the notifier's per-target progress (agents/notifier_progress.py): progress records must never
make a target skip a notification it is owed. Real broker, real receivers."""

from __future__ import annotations

import asyncio

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from agents.notifications import Notifier
from agents.notifier_progress import encode, target_keys
from sinks.webhook import WebhookTarget
from streams.settings import Settings
from streams.topics import NOTIFIER_PROGRESS
from tests.integration.test_notifier_progress import (
    COUNT,
    HANG,
    first_run_with_one_target_hanging,
    second_run,
)
from tests.integration.test_webhooks import (
    FAST,
    Receiver,
    committed_total,
    hot_lead,
    hot_settings,  # noqa: F401 (fixture)
    publish,
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


def write_progress(settings: Settings, group: str, base: int, done: dict[str, set[int]]) -> None:
    """The record a notifier of the same group wrote for every partition of leads.hot, as ProgressLog does."""
    topic, progress = settings.topic("leads.hot"), settings.topic(NOTIFIER_PROGRESS.name)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap)
    try:
        parts = producer.partitions_for(progress)
        for p in producer.partitions_for(topic):
            key = f"{group}\n{topic}\n{p}".encode()
            producer.send(progress, encode(base, done), key=key, partition=p % len(parts)).get(10)
    finally:
        producer.close()


async def test_progress_of_offsets_the_log_no_longer_holds_is_not_applied_to_the_records_reusing_them(
    hot_settings: Settings,  # noqa: F811
    receiver: tuple[Receiver, asyncio.Event],  # noqa: F811
) -> None:
    """leads.hot recreated (or truncated by an unclean leader election) while the group's offsets survived:
    the committed offset (3) lies past the log's end and the new notifications take offsets that the
    partition's progress record says json-1 finished. They are other notifications: json-1 must get every
    one json-0 gets (Tansu goes on from offset 3, Kafka from the earliest). Before, json-1 got none."""
    state, _ = receiver
    state.fixed = True
    group = "n-progress-reuse"
    targets = [WebhookTarget("json-0", state.url + "/ok"), WebhookTarget("json-1", state.url + "/fixable")]
    await asyncio.to_thread(reset_offsets, hot_settings, group, 3)
    done = {target_keys(targets)[1]: set(range(3, 12))}
    await asyncio.to_thread(write_progress, hot_settings, group, 3, done)
    notifier = Notifier(hot_settings, targets=targets, policy=FAST, group_id=group)
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: notifier.assigned, 30, "partition assignment")
        leads = [hot_lead(n, lead_id="L-reuse") for n in range(COUNT)]  # one key: offsets 0 to 11
        await asyncio.to_thread(publish, hot_settings, leads)
        await wait_until(lambda: len(state.unique("ok")) >= COUNT - 3, 30, "the notifications at json-0")
        await wait_until(lambda: notifier.pending.in_flight == 0, 30, "all deliveries finished")
        await asyncio.sleep(1.0)  # room for json-1's deliveries to show
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert {key.removeprefix("ok|") for key in state.unique("ok")} >= {f"hot-{n}" for n in range(3, COUNT)}
    assert {key.removeprefix("fixable|") for key in state.unique("fixable")} == {
        key.removeprefix("ok|") for key in state.unique("ok")
    }
