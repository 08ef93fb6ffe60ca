"""Workaround for a Tansu 0.6 bug, applied only when leadpulse talks to Tansu (``streams.broker.is_tansu``).

Bug: Tansu answers ListOffsets(latest) with ``base offset of the last batch + 1`` instead of the log end
offset whenever that batch held more than one record (the high watermark in Fetch responses is right).
Faust reads end offsets to know when table recovery is complete, so without this a restarted worker stops
restoring its changelog early and runs on stale state (or dies with ConsistencyError on rocksdb).

Correction: for every partition whose reported end is > 0, fetch from ``reported - 1`` (the start of the
last batch) and take the high watermark of that fetch response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streams.broker import aiokafka_client_config
from streams.kafka_close import start_client, stop_consumer
from streams.settings import Settings

log = logging.getLogger(__name__)

_applied = False


async def true_end_offsets(
    bootstrap: str,
    reported: Mapping[Any, int],
    timeout_s: float = 60.0,
    security: Mapping[str, Any] | None = None,
) -> dict[Any, int]:
    """Correct ListOffsets(latest) answers with Fetch high watermarks.

    Waits until every partition has answered a fetch: giving up early would hand back the buggy value and
    so a stale restore (seen under CI load, where a 2-second budget was not enough). ``security``: the
    aiokafka SASL/TLS settings (``streams.broker.aiokafka_client_config``); without them the fetch spoke
    plaintext to a secured broker, and the worker's restore and every erasure log read failed there."""
    todo = {tp: end for tp, end in reported.items() if end > 0}
    result: dict[Any, int] = dict(reported)
    if not todo:
        return result
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **(security or {})
    )
    await start_client(consumer)
    try:
        tps = {TopicPartition(tp.topic, tp.partition): tp for tp in todo}
        consumer.assign(list(tps))
        for tp, original in tps.items():
            consumer.seek(tp, todo[original] - 1)
        pending = set(tps)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            await consumer.getmany(*pending, timeout_ms=500, max_records=1)
            for tp in list(pending):
                high = consumer.highwater(tp)
                if high is not None:
                    result[tps[tp]] = max(high, todo[tps[tp]])
                    pending.discard(tp)
        if pending:
            raise TimeoutError(
                f"tansu_compat: no fetch high watermark within {timeout_s}s for {sorted(map(str, pending))}; "
                "refusing to use Tansu's ListOffsets answer (it would restore stale state)"
            )
    finally:
        await stop_consumer(consumer)
    return result


def patch_faust_end_offsets(bootstrap: str, security: Mapping[str, Any] | None = None) -> None:
    """Make Faust's aiokafka driver use corrected end offsets (idempotent)."""
    global _applied
    if _applied:
        return
    from faust.transport.drivers import aiokafka as faust_aiokafka

    original = faust_aiokafka.AIOKafkaConsumerThread._highwaters

    async def _highwaters(self: Any, partitions: Iterable[Any]) -> Mapping[Any, int]:
        reported = await original(self, list(partitions))
        if self.consumer.in_transaction:
            return reported
        return await true_end_offsets(bootstrap, reported, security=security)

    faust_aiokafka.AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]
    _applied = True
    log.info("tansu_compat: Faust end offsets corrected from fetch high watermarks (Tansu broker)")


async def end_offsets(
    consumer: AIOKafkaConsumer, settings: Settings, tps: list[TopicPartition], embedded: bool
) -> dict[Any, int]:
    """End offsets for plain aiokafka consumers (the worker's restore, erasure logs), corrected on Tansu
    (``embedded``: ``streams.broker.is_tansu``, which also says yes when it cannot tell), with the same
    SASL/TLS settings as ``consumer``'s."""
    reported = await consumer.end_offsets(tps)
    if not embedded:
        return dict(reported)
    return await true_end_offsets(settings.bootstrap, reported, security=aiokafka_client_config(settings))
