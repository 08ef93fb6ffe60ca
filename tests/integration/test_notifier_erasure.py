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
