"""The sink's consumer group timeouts follow the broker: DESIGN §11's 6 s session / 1 s heartbeat on Tansu
(a group join takes about half the session timeout there), 30 s / 3 s on Kafka. The sink used 6 s on every
broker, so on a production cluster one 6 s pause (a GC, a slow DNS answer) evicted it and rebalanced the
whole sink group for nothing; the worker already told the two apart."""

from __future__ import annotations

import asyncio

import pytest
from clickhouse_connect.driver.client import Client

from sinks.sink_loop import ClickHouseSinkLoop
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
