"""The worker's Kafka clients: an acknowledged producer tuned for whole batches, and the consumer of its one
group over the inputs and internal hops, range-assigned so partition *p* of every topic (one lead's events)
lands on the same worker.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from streams.broker import create_topics, group_timeouts, is_tansu, kafka_client_config
from streams.kafka_close import in_daemon_thread
from streams.settings import Settings
from streams.topics import TOPICS

GROUP = "leadpulse-worker"  # dashboards and alerts match this group label


async def check_broker(settings: Settings, tansu: bool | None = None) -> bool:
    """Whether the broker is Tansu, once every topic is there (created if missing): ``tansu`` when the caller
    knows it already (the worker's erasure log asked the broker a moment before), else ``is_tansu``.

    In daemon threads (``in_daemon_thread``), not ``asyncio.to_thread``: with the broker hung each call
    waits kafka-python's 30 s bootstrap timeout, and ``asyncio.run`` waits at exit for an executor thread, so
    a worker stopped meanwhile (``LeadWorker.run`` gives this up at a stop) still took up to 30 s to go."""
    if tansu is None:
        tansu = await in_daemon_thread(is_tansu, settings)
    config = kafka_client_config(settings)
    await in_daemon_thread(
        create_topics,
        settings.bootstrap,
        settings.topic_prefix,
        TOPICS,
        config,
        settings.topic_replication_factor,
    )
    return tansu


def worker_producer(settings: Settings, security: dict[str, Any]) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        **security,
    )


def worker_consumer(settings: Settings, tansu: bool, security: dict[str, Any]) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=settings.topic_prefix + GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=(RangePartitionAssignor,),
        **group_timeouts(tansu),
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **security,
    )
