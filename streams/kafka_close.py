"""Starting, stopping and committing with aiokafka clients when the broker is gone.

aiokafka 0.14 bug (aio-libs/aiokafka#647, open): ``AIOKafkaConsumer.stop()`` cancels the fetcher's pending
fetch tasks and awaits them. A fetch task that failed to reach the broker sits in ``asyncio.sleep(retry
backoff)`` *inside* its ``except KafkaError`` block, where cancellation is not caught, so the
``CancelledError`` escapes ``stop()``. Every process then died on SIGTERM during a broker outage with a
40-line traceback, and stop() never got to close the client ("Unclosed AIOKafkaConsumer").

``stop_consumer`` tells that stray cancellation from a real one (our own task being cancelled, which is
re-raised) and finishes what ``stop()`` skipped. It touches aiokafka's private fetcher and client, which
is why it lives in this one module.

aiokafka's ``commit()`` and ``committed()`` wait for a group coordinator *forever* (its
``ensure_coordinator_known`` loops), so during an outage one such call held a process past its SIGTERM until
it was killed (the sink, when the broker went away while it read its new partitions' commits).
``COMMIT_TIMEOUT_S`` bounds them: a commit that does not happen only means records are read again after a
restart, and every output is idempotent.

``start_client`` closes a client whose ``start()`` failed (no broker at start-up): aiokafka leaves it open,
and the process then ended with "Unclosed AIOKafkaConsumer" after its one-line error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)


class CoordinatorUnreachable(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The group coordinator did not answer in time (the broker is away); a KafkaError so that callers'
    existing "commit refused: re-read later" handling covers it."""


#: Longest wait for a commit or a committed-offset read (a healthy broker answers in milliseconds).
COMMIT_TIMEOUT_S = 10.0


async def commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    """``consumer.commit(offsets)``, raising ``CoordinatorUnreachable`` after ``COMMIT_TIMEOUT_S``."""
    try:
        await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_S)
    except TimeoutError:
        raise CoordinatorUnreachable(
            f"no group coordinator answered a commit within {COMMIT_TIMEOUT_S:g}s"
        ) from None


async def committed(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """``consumer.committed(tp)``, raising ``CoordinatorUnreachable`` after ``COMMIT_TIMEOUT_S``."""
    try:
        return await asyncio.wait_for(consumer.committed(tp), COMMIT_TIMEOUT_S)
    except TimeoutError:
        raise CoordinatorUnreachable(
            f"no group coordinator answered for the committed offset of {tp.topic}[{tp.partition}] "
            f"within {COMMIT_TIMEOUT_S:g}s"
        ) from None


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()`` that completes during a broker outage; a cancellation of the caller still wins."""
    try:
        await consumer.stop()
        return
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    log.debug("aiokafka#647: a fetch task's cancellation escaped consumer.stop(); finishing the close")
    fetcher: Any = getattr(consumer, "_fetcher", None)
    for pending in list(getattr(fetcher, "_pending_tasks", ())):
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending
    client: Any = getattr(consumer, "_client", None)
    if client is not None:
        with contextlib.suppress(Exception):
            await client.close()


async def start_client(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """``client.start()``; if it fails, the client is closed before the error propagates."""
    try:
        await client.start()
    except BaseException:
        with contextlib.suppress(Exception):
            if isinstance(client, AIOKafkaConsumer):
                await stop_consumer(client)
            else:
                await client.stop()
        raise
