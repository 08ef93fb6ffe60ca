"""The sink's and the notifier's consumer group timeouts follow the broker: DESIGN §11's 6 s session / 1 s
heartbeat on Tansu (a group join takes about half the session timeout there), 30 s / 3 s on Kafka. Both used
6 s on every broker, so on a production cluster one 6 s pause (a GC, a slow DNS answer) evicted a member and
rebalanced the whole group for nothing; the worker already told the two apart."""

from __future__ import annotations

import asyncio

import pytest
from clickhouse_connect.driver.client import Client

from agents.notifications import Notifier
from sinks.sink_loop import ClickHouseSinkLoop
from sinks.webhook import WebhookTarget
from streams.erasures import ErasureLog
from streams.settings import Settings

pytestmark = pytest.mark.integration


def timeouts(settings: Settings, ch: Client) -> tuple[int, int]:
    """The sink's group member's (session, heartbeat) after its start-time read of the erasure log, which
    is where it learns the broker's kind."""

    async def build() -> tuple[int, int]:
        loop = ClickHouseSinkLoop(settings, ch)
        loop.erasures = ErasureLog(settings)
        await loop.erasures.start()
        try:
            consumer = loop.group_consumer({})
            return consumer._session_timeout_ms, consumer._heartbeat_interval_ms
        finally:
            await loop.erasures.stop()

    return asyncio.run(build())


def test_on_tansu_the_sink_uses_the_short_group_timeouts(broker_settings: Settings, ch: Client) -> None:
    # LEADPULSE_KAFKA_BOOTSTRAP points at the test Tansu: recognised by its cluster id, not by a setting
    assert broker_settings.tansu_workaround is None
    assert timeouts(broker_settings, ch) == (6000, 1000)


def test_on_kafka_the_sink_uses_the_longer_group_timeouts(broker_settings: Settings, ch: Client) -> None:
    kafka = broker_settings.model_copy(update={"tansu_workaround": False})  # what a Kafka cluster answers
    assert timeouts(kafka, ch) == (30000, 3000)


def notifier_timeouts(settings: Settings) -> tuple[int, int]:
    async def build() -> tuple[int, int]:
        erasures = ErasureLog(settings)
        await erasures.start()
        try:
            slack = WebhookTarget("slack-0", "http://127.0.0.1:9/x", kind="slack")  # needs no secret
            notifier = Notifier(settings, targets=[slack], erasures=erasures)
            consumer = notifier.group_consumer()
            return consumer._session_timeout_ms, consumer._heartbeat_interval_ms
        finally:
            await erasures.stop()

    return asyncio.run(build())


def test_the_notifier_uses_the_group_timeouts_of_its_broker(broker_settings: Settings) -> None:
    assert notifier_timeouts(broker_settings) == (6000, 1000)
    assert notifier_timeouts(broker_settings.model_copy(update={"tansu_workaround": False})) == (30000, 3000)


def test_the_worker_uses_the_group_timeouts_of_its_broker(broker_settings: Settings) -> None:
    from agents.worker_clients import worker_consumer

    async def build(tansu: bool) -> tuple[int, int]:
        consumer = worker_consumer(broker_settings, tansu, {})
        return consumer._session_timeout_ms, consumer._heartbeat_interval_ms

    assert asyncio.run(build(True)) == (6000, 1000)
    assert asyncio.run(build(False)) == (30000, 3000)
