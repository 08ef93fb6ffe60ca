"""``streams.kafka_close`` against a real broker that goes away: commits are bounded, stop completes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import kafka_close
from streams.broker import EmbeddedBroker, create_topics, free_port, tansu_binary
from streams.settings import load_settings

pytestmark = pytest.mark.integration


async def test_commit_calls_give_up_and_stop_completes_once_the_broker_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_close, "COMMIT_TIMEOUT_S", 1.0)
    broker = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", free_port(), tmp_path / "tansu.log")
    broker.start()
    try:
        create_topics(broker.bootstrap, "kc.")
        topic = "kc.events.web_visits"
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id="kc-group",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        await consumer.start()
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "no assignment within 30 s"
            await consumer.getmany(timeout_ms=200)
        tp = TopicPartition(topic, 0)
        await kafka_close.commit(consumer, {tp: 0})  # healthy: answered at once
        assert await kafka_close.committed(consumer, tp) == 0

        broker.stop()
        await consumer.getmany(timeout_ms=1500)  # let the fetcher fail and sit in its retry backoff
        started = time.monotonic()
        with pytest.raises(kafka_close.CoordinatorUnreachable, match="commit within 1s"):
            await kafka_close.commit(consumer, {tp: 1})
        with pytest.raises(kafka_close.CoordinatorUnreachable, match=r"web_visits\[0\]"):
            await kafka_close.committed(consumer, tp)
        assert time.monotonic() - started < 10

        await asyncio.wait_for(kafka_close.stop_consumer(consumer), 20)
        # client.close() clears its metadata task: not done = the "Unclosed AIOKafkaConsumer" case
        assert consumer._client._sync_task is None, "stop_consumer left the client open"
    finally:
        broker.stop()


async def test_a_start_waiting_for_its_first_assignment_gives_up_when_stopped_after_the_broker_died(
    tmp_path: Path,
) -> None:
    """A subscribed consumer's ``start()`` waits for its first assignment, for ever once the broker is gone:
    a worker, sink or notifier whose broker died while it joined its group ignored SIGTERM until SIGKILL."""
    broker = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", free_port(), tmp_path / "tansu.log")
    broker.start()

    def joining() -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            group_id="kc-join",
            enable_auto_commit=False,
            session_timeout_ms=6000,  # Tansu answers a join after about half of it
            heartbeat_interval_ms=1000,
        )
        consumer.subscribe(["kc.events.web_visits"])
        return consumer

    try:
        create_topics(broker.bootstrap, "kc.")
        plain, stoppable = joining(), joining()
        stop = asyncio.Event()
        plain_start = asyncio.ensure_future(kafka_close.start_client(plain))
        stoppable_start = asyncio.ensure_future(kafka_close.start_unless_stopped(stoppable, stop.is_set))
        await asyncio.sleep(1.0)  # both bootstrapped and asking to join
        assert not plain_start.done() and not stoppable_start.done()
        broker.stop()
        await asyncio.sleep(1.0)
        stop.set()
        started = time.monotonic()
        assert await asyncio.wait_for(stoppable_start, 20) is False
        assert time.monotonic() - started < 12  # the close is bounded (STOP_TIMEOUT_S)
        assert stoppable._closed
        # the premise: without the stop, start() is still waiting
        assert not plain_start.done()
        plain_start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await plain_start
    finally:
        broker.stop()
