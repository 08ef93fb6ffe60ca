"""A restarted notifier does not send a target again what that target finished before the stop, while a
target that had not finished gets everything (agents/notifier_progress.py). Before, the group's offsets held
every target back to the oldest notification any one target owed, and a restart re-posted to Slack (no
idempotency key) everything delivered while another target hung. Real broker, real receivers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from agents.notifications import Notifier
from sinks.webhook import RetryPolicy, WebhookTarget
from streams.broker import EmbeddedBroker, create_topics
from streams.settings import Settings
from streams.topics import NOTIFIER_PROGRESS, TOPICS
from tests.integration.test_webhooks import (
    SECRET,
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

COUNT = 12
HANG = RetryPolicy(max_attempts=2, base_s=0.02, cap_s=0.1, timeout_s=60.0)  # the hang outlasts the test


async def first_run_with_one_target_hanging(
    settings: Settings, state: Receiver, release: asyncio.Event, group: str
) -> None:
    """json-0 hangs on every notification while json-1 takes all of them; then the notifier stops."""
    targets = [WebhookTarget("json-0", state.url + "/hang"), WebhookTarget("json-1", state.url + "/ok")]
    notifier = Notifier(settings, targets=targets, policy=HANG, group_id=group, concurrency=2)
    stop, task = await start(notifier)
    await wait_until(lambda: notifier.assigned, 30, "partition assignment")
    await asyncio.to_thread(publish, settings, [hot_lead(n) for n in range(COUNT)])
    await wait_until(lambda: len(state.unique("ok")) == COUNT, 30, "every notification at json-1")
    assert not state.unique("hang") and not release.is_set()
    stop.set()
    await asyncio.wait_for(task, 30)


async def second_run(settings: Settings, targets: list[WebhookTarget], group: str, done: Receiver) -> None:
    notifier = Notifier(settings, targets=targets, policy=HANG, group_id=group, concurrency=2)
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: len(done.unique("hang")) == COUNT, 60, "every notification at json-0")
        await wait_until(lambda: notifier.pending.in_flight == 0, 30, "all deliveries finished")
        await asyncio.sleep(1.0)  # room for a re-send to show
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_after_a_restart_a_target_is_not_sent_again_what_it_finished_while_another_hung(
    hot_settings: Settings,  # noqa: F811
    receiver: tuple[Receiver, asyncio.Event],  # noqa: F811
) -> None:
    state, release = receiver
    await first_run_with_one_target_hanging(hot_settings, state, release, "n-progress")
    assert await asyncio.to_thread(committed_total, hot_settings, "n-progress") <= COUNT
    release.set()  # json-0 is healthy again: same targets, same order
    targets = [WebhookTarget("json-0", state.url + "/hang"), WebhookTarget("json-1", state.url + "/ok")]
    await second_run(hot_settings, targets, "n-progress", state)
    # json-1 got each notification exactly once over both runs; json-0 got every one of them
    assert {k: n for k, n in state.attempts.items() if k.startswith("ok|")} == {
        f"ok|hot-{n}": 1 for n in range(COUNT)
    }
    assert state.unique("hang") == {f"hang|hot-{n}" for n in range(COUNT)}
    assert await asyncio.to_thread(committed_total, hot_settings, "n-progress") == COUNT


async def test_progress_of_a_target_is_not_applied_to_another_url_in_its_place(
    hot_settings: Settings,  # noqa: F811
    receiver: tuple[Receiver, asyncio.Event],  # noqa: F811
) -> None:
    """Names are positions in the configured lists: json-1 is another endpoint after the list changed, and
    it must get every notification, though the json-1 of the first run had them all."""
    state, release = receiver
    await first_run_with_one_target_hanging(hot_settings, state, release, "n-progress-edit")
    release.set()
    state.fixed = True
    targets = [WebhookTarget("json-0", state.url + "/hang"), WebhookTarget("json-1", state.url + "/fixable")]
    await second_run(hot_settings, targets, "n-progress-edit", state)
    assert state.unique("fixable") == {f"fixable|hot-{n}" for n in range(COUNT)}
    assert {k: n for k, n in state.attempts.items() if k.startswith("ok|")} == {
        f"ok|hot-{n}": 1 for n in range(COUNT)
    }
    assert state.unique("hang") == {f"hang|hot-{n}" for n in range(COUNT)}


async def test_after_a_rebalance_the_new_owner_does_not_send_a_target_what_it_finished(
    hot_settings: Settings,  # noqa: F811
    receiver: tuple[Receiver, asyncio.Event],  # noqa: F811
) -> None:
    """A second notifier joins the group while json-0 hangs: the partitions it takes over are not sent
    again to json-1, which had them all; json-0 gets every one once it answers."""
    state, release = receiver
    targets = [WebhookTarget("json-0", state.url + "/hang"), WebhookTarget("json-1", state.url + "/ok")]
    first = Notifier(hot_settings, targets=targets, policy=HANG, group_id="n-progress-join", concurrency=2)
    stop_first, task_first = await start(first)
    await wait_until(lambda: first.assigned, 30, "partition assignment")
    await asyncio.to_thread(publish, hot_settings, [hot_lead(n) for n in range(COUNT)])
    await wait_until(lambda: len(state.unique("ok")) == COUNT, 30, "every notification at json-1")
    owned = len(first.pending.committable())
    second = Notifier(hot_settings, targets=targets, policy=HANG, group_id="n-progress-join", concurrency=2)
    stop_second, task_second = await start(second)
    try:
        await wait_until(lambda: second.assigned and first.revocations > 0, 30, "the rebalance")
        await wait_until(lambda: bool(second.pending.committable()), 30, "the second notifier's fetch")
        release.set()
        await wait_until(lambda: len(state.unique("hang")) == COUNT, 60, "every notification at json-0")
        await wait_until(
            lambda: first.pending.in_flight == 0 and second.pending.in_flight == 0, 30, "all finished"
        )
        await asyncio.sleep(1.0)  # room for a re-send to show
    finally:
        stop_second.set()
        stop_first.set()
        await asyncio.gather(asyncio.wait_for(task_first, 30), asyncio.wait_for(task_second, 30))
    assert owned > 0 and second.pending.committable()  # partitions did move
    assert {k: n for k, n in state.attempts.items() if k.startswith("ok|")} == {
        f"ok|hot-{n}": 1 for n in range(COUNT)
    }
    assert await asyncio.to_thread(committed_total, hot_settings, "n-progress-join") == COUNT


async def test_without_the_progress_topic_the_notifier_delivers_as_before_and_says_so(
    broker: EmbeddedBroker,
    make_settings: Callable[..., Settings],
    receiver: tuple[Receiver, asyncio.Event],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upgrade that did not run `leadpulse topics create`: every notification is delivered, the stop is
    prompt, and a warning names the missing topic (a restart re-sends as before the progress records)."""
    prefix = f"np-missing-{os.getpid()}."
    await asyncio.to_thread(
        create_topics, broker.bootstrap, prefix, [t for t in TOPICS if t is not NOTIFIER_PROGRESS]
    )
    settings = make_settings(kafka_bootstrap=broker.bootstrap, topic_prefix=prefix, webhook_secret=SECRET)
    state, _ = receiver
    notifier = Notifier(settings, targets=[WebhookTarget("json-0", state.url + "/ok")], group_id="n-np")
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: notifier.assigned, 30, "partition assignment")
        await asyncio.to_thread(publish, settings, [hot_lead(n) for n in range(COUNT)])
        await wait_until(lambda: len(state.unique("ok")) == COUNT, 30, "every notification")
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "all deliveries finished")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert f"topic {settings.topic(NOTIFIER_PROGRESS.name)} is missing" in caplog.text
    assert await asyncio.to_thread(committed_total, settings, "n-np") == COUNT
