"""A commit given up (timed out, or its caller cancelled) leaves alone another caller committing on the same
consumer at the same time (``streams.kafka_close.commit``), and the consumer commits again once the broker is
back.

Why it matters: the notifier commits from its commit loop, from its rebalance listener (inside aiokafka's
coordination task) and at its stop (5 s, the others 10 s), on one consumer. Cancelling every commit task of
the consumer's coordinator made another caller's commit, still awaited, raise ``CancelledError`` out of
``consumer.commit``: a task that nobody cancelled then ended as cancelled (``GroupOffsets.commit`` catches
``Exception`` only): the commit loop, or aiokafka's coordination task through the listener, which ends the
member's part in the group.

How: a private Tansu paused with SIGSTOP while the first commit's request is sent; a second commit waits
behind it for aiokafka's commit lock and is given up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import kafka_close
from streams.broker import create_topics, start_private_broker

pytestmark = pytest.mark.faults


def _commit_tasks(consumer: AIOKafkaConsumer) -> list[asyncio.Task[object]]:
    coordinator = consumer._coordinator
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "GroupCoordinator._do_commit_offsets"
        and getattr(task.get_coro(), "cr_frame", None) is not None
        and task.get_coro().cr_frame.f_locals.get("self") is coordinator  # type: ignore[union-attr]
    ]


@pytest.mark.parametrize("given_up", ["timed-out", "cancelled"])
async def test_a_commit_given_up_leaves_another_callers_commit_alone(tmp_path: Path, given_up: str) -> None:
    broker = start_private_broker(tmp_path / "tansu.log")
    assert broker.process is not None
    paused = False
    consumer = AIOKafkaConsumer(
        "cg.events.web_visits",
        bootstrap_servers=broker.bootstrap,
        group_id="cg-group",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    try:
        create_topics(broker.bootstrap, "cg.")
        await consumer.start()
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "no assignment within 30 s"
            await consumer.getmany(timeout_ms=200)
        tp = TopicPartition("cg.events.web_visits", 0)
        await kafka_close.commit(consumer, {tp: 0})  # healthy: answered at once

        os.kill(broker.process.pid, signal.SIGSTOP)
        paused = True
        first = asyncio.ensure_future(kafka_close.commit(consumer, {tp: 1}, 3.0))
        while not _commit_tasks(consumer):  # its request is sent: it holds aiokafka's commit lock
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(kafka_close.commit(consumer, {tp: 2}, 0.5))
        await asyncio.sleep(0.1)  # waiting for the lock
        if given_up == "cancelled":
            second.cancel()
        with pytest.raises(
            asyncio.CancelledError if given_up == "cancelled" else kafka_close.CoordinatorUnreachable
        ):
            await second

        started = time.monotonic()
        # the first caller still waits for its own answer, and gives up at its own time
        with pytest.raises(kafka_close.CoordinatorUnreachable, match="within 3s"):
            await first
        assert time.monotonic() - started > 1.5

        # the broker back: a later commit on the same consumer works (no lock held, the connection in step)
        os.kill(broker.process.pid, signal.SIGCONT)
        paused = False
        await kafka_close.commit(consumer, {tp: 3})
        assert await kafka_close.committed(consumer, tp) == 3
    finally:
        if paused:
            os.kill(broker.process.pid, signal.SIGCONT)
        await asyncio.wait_for(kafka_close.stop_consumer(consumer), 20)
        broker.stop()
