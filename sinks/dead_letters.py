"""The sink's dead letters: records it cannot store, sent to the ``dlq`` topic with the reason and where
they were read (topic[partition]@offset). The producer is opened with the first dead letter."""

from __future__ import annotations

import asyncio
from typing import Any

from schemas.registry import SchemaRegistry
from streams.dlq import dead_letter, encode_dead_letter, writer_headers
from streams.kafka_close import STOP_TIMEOUT_S
from streams.settings import Settings

DLQ_HEADERS = writer_headers("sink")


class DeadLetters:
    """Sends dead letters; ``flush`` makes them durable before the sink commits past them."""

    def __init__(self, settings: Settings, registry: SchemaRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._producer: Any = None

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
        if self._producer is None:
            from streams.producer import Producer

            self._producer = Producer(self.settings)
        dlq_key, dlq_value = encode_dead_letter(record, self.registry)
        self._producer.send_encoded(self.settings.topic("dlq"), dlq_key, dlq_value, headers=DLQ_HEADERS)

    async def flush(self) -> None:
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush)

    async def close(self) -> None:
        if self._producer is not None:  # bounded like the consumer's close
            await asyncio.to_thread(self._producer.close, STOP_TIMEOUT_S)
