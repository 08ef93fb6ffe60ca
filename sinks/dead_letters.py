"""The sink's dead letters: records it cannot store, sent to the ``dlq`` topic with the reason and where
they were read (topic[partition]@offset). The producer is opened with the first dead letter.

A letter the broker does not take (no broker within the send's metadata wait, or not acknowledged) is
kept and sent again at the next ``flush``, which raises ``SinkBackpressure`` until every letter is
acknowledged: the sink then backs off and commits nothing past the record (before, a send without a
broker raised out of the loop and ended the sink). A letter may so be written twice, never lost while the
process lives.
"""

from __future__ import annotations

import asyncio
from typing import Any

from schemas.registry import SchemaRegistry
from sinks.errors import SinkBackpressure
from streams.dlq import dead_letter, encode_dead_letter, writer_headers
from streams.kafka_close import STOP_TIMEOUT_S
from streams.producer import DeliveryError
from streams.settings import Settings

DLQ_HEADERS = writer_headers("sink")
FLUSH_TIMEOUT_S = 30.0  # kafka-python does not always expire its batches while no broker answers
RETRY_AFTER_S = 5.0


class DeadLetters:
    """Sends dead letters; ``flush`` makes them durable before the sink commits past them."""

    def __init__(self, settings: Settings, registry: SchemaRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._producer: Any = None
        self._unacknowledged: list[tuple[Any, bytes | None, bytes]] = []  # (future, key, value)
        self._unsent: list[tuple[bytes | None, bytes]] = []

    def send(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        stage: str,
        error_type: str,
        reason: str,
    ) -> None:
        record = dead_letter(
            topic,
            partition,
            offset,
            key,
            value,
            stage,
            f"{topic}[{partition}]@{offset}: {reason}",
            error_type=error_type,
            registry=self.registry,
        )
        self._send(*encode_dead_letter(record, self.registry))

    def _send(self, key: bytes | None, value: bytes) -> None:
        if self._producer is None:
            from streams.producer import Producer

            self._producer = Producer(self.settings)
        try:
            future = self._producer.send_encoded(self.settings.topic("dlq"), key, value, headers=DLQ_HEADERS)
        except DeliveryError:  # no broker within the metadata wait: nothing sent, try again at the flush
            self._unsent.append((key, value))
            return
        self._unacknowledged.append((future, key, value))

    async def flush(self) -> None:
        """Every letter acknowledged, or ``SinkBackpressure`` (the caller commits nothing past them)."""
        if self._producer is None:
            return
        try:
            await asyncio.to_thread(self._flush)
        except DeliveryError as exc:
            raise SinkBackpressure("dlq", RETRY_AFTER_S, exc, what="sending dead letters") from exc

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        for key, value in unsent:
            self._send(key, value)
        try:
            self._producer.flush(FLUSH_TIMEOUT_S)
        except DeliveryError:
            sent, self._unacknowledged = self._unacknowledged, []
            self._unsent.extend((key, value) for future, key, value in sent if not future.succeeded())
            raise
        self._unacknowledged.clear()
        if self._unsent:
            raise DeliveryError([(self.settings.topic("dlq"), None, "no broker took the dead letters")])

    async def close(self) -> None:
        if self._producer is not None:  # bounded like the consumer's close
            await asyncio.to_thread(self._producer.close, STOP_TIMEOUT_S)
