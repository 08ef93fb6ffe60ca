"""Closing the notifier's Kafka clients at a stop: the group consumer and the producer at once, the
producer's flush given up after ``PRODUCER_STOP_S``.

Why: with the broker hung right after a commit, a progress record (``agents/notifier_progress.py``) whose
write was given up stayed in the producer, and its close waited ``STOP_TIMEOUT_S`` for it after the
consumer's own: SIGTERM took 33 s, past the 25 s the shutdown tests allow
(tests/faults/test_notifier_stop_broker_hung.py).
Nothing the producer can still hold at a stop needs the wait: a dead letter counts only once acknowledged
(its notification stays uncommitted until then) and a progress record not written only makes a restart send
targets again what they had finished, so both are given up (the worker closes its two clients at once too).
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams import kafka_close

log = logging.getLogger("agents.notifications")

#: Longest wait at a stop for the producer's unacknowledged records (each write waited for its own
#: acknowledgement already, so on a healthy broker there are none).
PRODUCER_STOP_S = 1.0


async def stop_clients(consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
    """Leave the group and close the producer, both at once (``streams.kafka_close.stop_clients``)."""
    _left, flushed = await kafka_close.stop_clients(consumer, producer, PRODUCER_STOP_S)
    if not flushed:
        log.warning(
            "notifier stopping: records the broker had not acknowledged were given up at the stop: progress "
            "(a restart may send targets again what they had finished) or dead letters (their notifications "
            "are not committed: handled again after a restart); nothing is lost"
        )
