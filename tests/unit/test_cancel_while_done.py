"""A task cancelled just as the call it waits for with a time limit completes is cancelled, not carried on.

Python 3.11's ``asyncio.wait_for`` returned the result and dropped the cancellation in that case (CPython
gh-86296): the notifier's commit loop, cancelled at its stop while a commit was answered, went on committing
every 0.5 s, and the notifier's stop never finished (seen once: still running 30 s after stop)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

from agents.notifier_dead_letters import _stopped_within
from streams import kafka_close

pytestmark = pytest.mark.unit


class AnsweringConsumer:
    """Stands in for an AIOKafkaConsumer whose commit / committed answer when ``answer`` is set."""

    def __init__(self) -> None:
        self.answer = asyncio.get_running_loop().create_future()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.answer

    async def committed(self, tp: TopicPartition) -> int:
        await self.answer
        return 3


async def cancelled_as_it_completes(call: Callable[[], Awaitable[Any]], complete: Callable[[], None]) -> bool:
    task = asyncio.ensure_future(call())
    for _ in range(3):
        await asyncio.sleep(0)  # the task waits inside the call
    assert not task.done()
    complete()
    task.cancel()  # in the same loop iteration as the answer
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


async def test_a_commit_cancelled_as_the_broker_answers_is_cancelled() -> None:
    consumer = AnsweringConsumer()
    tp = TopicPartition("t", 0)
    assert await cancelled_as_it_completes(
        lambda: kafka_close.commit(consumer, {tp: 1}),  # type: ignore[arg-type]
        lambda: consumer.answer.set_result(None),
    )


async def test_a_committed_offset_read_cancelled_as_the_broker_answers_is_cancelled() -> None:
    consumer = AnsweringConsumer()
    assert await cancelled_as_it_completes(
        lambda: kafka_close.committed(consumer, TopicPartition("t", 0)),  # type: ignore[arg-type]
        lambda: consumer.answer.set_result(None),
    )


async def test_a_dead_letter_backoff_cancelled_as_the_stop_is_set_is_cancelled() -> None:
    stop = asyncio.Event()
    assert await cancelled_as_it_completes(lambda: _stopped_within(stop, 10.0), stop.set)


async def test_the_bounded_calls_still_answer_and_time_out() -> None:
    consumer = AnsweringConsumer()
    consumer.answer.set_result(None)
    assert await kafka_close.committed(consumer, TopicPartition("t", 0)) == 3  # type: ignore[arg-type]
    stop = asyncio.Event()
    assert await _stopped_within(stop, 0.01) is False
    stop.set()
    assert await _stopped_within(stop, 10.0) is True
