"""The notifier and ``leadpulse forget``: a hot-lead notification of an erased lead still on ``leads.hot``
(queued while the notifier was down or behind, or put back by ``leadpulse dlq replay --stage webhook``) is
neither delivered to a receiver nor dead-lettered (which would put its email back on a topic), and its
offset is committed; other leads' notifications are delivered as usual. Real broker, real receivers."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from agents.notifications import Notifier
from sinks.webhook import WebhookTarget
from streams.erasures import erasure_record, publish_erasure
from streams.metrics import Metrics
from streams.reader import Decoded, read_topic
from streams.settings import Settings
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


async def test_an_erased_leads_queued_notification_is_neither_delivered_nor_dead_lettered(
    hot_settings: Settings,  # noqa: F811
    receiver: tuple[Receiver, asyncio.Event],  # noqa: F811
) -> None:
    state, _ = receiver
    metrics = Metrics(CollectorRegistry(), component="notifier")
    targets = [WebhookTarget("json-0", state.url + "/ok"), WebhookTarget("json-1", state.url + "/gone")]
    # the lead became hot, then was forgotten before the notifier (down, or behind) took its notification
    await asyncio.to_thread(publish, hot_settings, [hot_lead(1, "L-erased"), hot_lead(2, "L-kept")])
    record = erasure_record("L-erased", [], int(time.time() * 1000))
    await asyncio.to_thread(publish_erasure, hot_settings, record)
    notifier = Notifier(hot_settings, targets=targets, metrics=metrics, policy=FAST, group_id="n-erased")
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: "ok|hot-2" in state.unique("ok"), 30, "the kept lead's delivery")
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "both notifications settled")
        # dlq replay of an old dead letter of the erased lead: the running notifier drops it too
        await asyncio.to_thread(publish, hot_settings, [hot_lead(3, "L-erased")])
        await asyncio.sleep(1.5)
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "the replayed copy settled")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert state.unique("ok") == {"ok|hot-2"}
    assert not [k for k in state.attempts if k.endswith(("hot-1", "hot-3"))]
    letters = [
        i.record
        for i in await asyncio.to_thread(
            lambda: list(read_topic(hot_settings, hot_settings.topic("dlq"), idle_ms=800))
        )
        if isinstance(i, Decoded)
    ]
    assert [d["event_id"] for d in letters] == ["hot-2"]  # the kept lead's give-up at /gone only
    assert await asyncio.to_thread(committed_total, hot_settings, "n-erased") == 3


class ErasedAfterFirstAttempt:
    """The erasure log as the notifier sees it: the lead is erased once the receiver saw one attempt."""

    def __init__(self, state: Receiver, lead: str, attempt_key: str) -> None:
        self.state, self.lead, self.attempt_key = state, lead, attempt_key

    def is_erased(self, identity: str | None) -> bool:
        return identity == self.lead and self.state.attempts[self.attempt_key] >= 1


async def test_a_notification_whose_lead_is_erased_during_its_retries_is_not_retried_nor_dead_lettered(
    hot_settings: Settings,  # noqa: F811
    receiver: tuple[Receiver, asyncio.Event],  # noqa: F811
) -> None:
    state, _ = receiver
    targets = [WebhookTarget("json-0", state.url + "/flaky")]  # 503 three times, then 200
    erasures = ErasedAfterFirstAttempt(state, "L-retried", "flaky|hot-9")
    metrics = Metrics(CollectorRegistry(), component="notifier")
    notifier = Notifier(
        hot_settings, targets=targets, policy=FAST, group_id="n-retried", erasures=erasures, metrics=metrics
    )
    await asyncio.to_thread(publish, hot_settings, [hot_lead(9, "L-retried")])
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: state.attempts["flaky|hot-9"] >= 1, 30, "the first attempt")
        await asyncio.sleep(1.0)  # FAST retries within 0.3 s
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "the notification settled")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert state.attempts["flaky|hot-9"] == 1
    assert not state.accepted
    # the retry withdrawn before it was made is not counted (it was, in leadpulse_webhook_retries_total)
    retries = metrics.registry.get_sample_value("leadpulse_webhook_retries_total", {"target": "json-0"})
    assert (retries or 0.0) == 0.0
    letters = await asyncio.to_thread(
        lambda: [i for i in read_topic(hot_settings, hot_settings.topic("dlq"), idle_ms=800)]
    )
    assert letters == []
    assert await asyncio.to_thread(committed_total, hot_settings, "n-retried") == 1


async def test_a_stop_while_the_erasure_log_is_read_at_start_ends_the_notifier_at_once(
    hot_settings: Settings,  # noqa: F811
    receiver: tuple[Receiver, asyncio.Event],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The notifier reads the whole erasure log before it joins its group, for up to a minute (plus the
    broker's answers). A SIGTERM meanwhile was not looked at until the read ended, though a stop takes about
    ``stop_grace_s`` otherwise (nothing is taken yet, so nothing is lost by ending at once). Staged: a broker
    slow to give the log's end offset."""
    state, _ = receiver

    async def slow_end_offsets(*args: object, **kwargs: object) -> dict[object, int]:
        await asyncio.sleep(60)
        return {}

    monkeypatch.setattr("streams.erasures.end_offsets", slow_end_offsets)
    notifier = Notifier(hot_settings, targets=[WebhookTarget("json-0", state.url + "/ok")], policy=FAST)
    stop, task = await start(notifier)
    await asyncio.sleep(2.0)  # reading the log
    assert not task.done()
    stop.set()
    began = time.monotonic()
    await asyncio.wait_for(task, 90)
    assert time.monotonic() - began < 5, f"stopped after {time.monotonic() - began:.0f} s"
