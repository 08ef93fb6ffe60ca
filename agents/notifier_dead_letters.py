"""The notifier's dead letters: a notification that does not decode, or that a target did not take, goes to
``dlq`` with its original bytes (stage ``decode`` or ``webhook``), sent until the broker acknowledges it.

Why apart from the consumer loop (``agents/notifications.py``) and delivery (``agents/notifier_delivery.py``):
both write dead letters, and how one is written (the record, its retries, giving way at a stop) is the same
for both.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from sinks.webhook import Stopping
from streams.backoff import Backoff
from streams.dlq import dead_letter, encode_dead_letter, writer_headers
from streams.topics import DLQ, HOT_LEADS

if TYPE_CHECKING:
    from agents.notifications import Notifier

log = logging.getLogger("agents.notifications")  # the name it logged under before the split: lines unchanged
DLQ_HEADERS = writer_headers("notifier")
DLQ_RETRY_FIRST_S, DLQ_RETRY_MAX_S = 0.5, 10.0  # back-off between sends of a dead letter not acknowledged


async def send_dead_letter(
    notifier: Notifier,
    producer: AIOKafkaProducer,
    tp: TopicPartition,
    offset: int,
    key: bytes | None,
    value: bytes,
    stage: str,
    error: BaseException | str,
    error_type: str | None = None,
) -> None:
    """Sent until the broker acknowledges it; ``Stopping`` when the notifier stops first (then the
    offset stays uncommitted and the next process handles the notification again)."""
    record = dead_letter(
        tp.topic,
        tp.partition,
        offset,
        key,
        value,
        stage,
        error,
        registry=notifier.registry,
        error_type=error_type,
    )
    dlq_key, dlq_value = encode_dead_letter(record, notifier.registry)
    backoff = Backoff(DLQ_RETRY_FIRST_S, DLQ_RETRY_MAX_S)
    while True:
        try:
            await producer.send_and_wait(
                notifier.settings.topic(DLQ.name), value=dlq_value, key=dlq_key, headers=DLQ_HEADERS
            )
            break
        except KafkaError as exc:
            delay = backoff.next()
            # Given up, the notification was neither delivered nor a dead letter, and its offset (so
            # its partition's commits) stayed where it was until a restart.
            log.warning(
                "dead letter of %s[%d]@%d not taken by the broker (%s: %s); sending it again in %.1f s",
                tp.topic,
                tp.partition,
                offset,
                type(exc).__name__,
                exc,
                delay,
            )
            if await _stopped_within(notifier.stopping, delay):
                raise Stopping from exc
    notifier.metrics.dlq_records.labels(source_topic=HOT_LEADS.name, stage=stage).inc()


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Whether ``stop`` was set within ``seconds``. ``asyncio.timeout``, not ``wait_for``: on Python 3.11
    ``wait_for`` swallowed a cancellation arriving as ``stop`` was set, and the lane's worker, cancelled at
    the notifier's stop, went back to its queue and held the stop until it was cancelled again."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True
