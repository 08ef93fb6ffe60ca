"""Event-to-score latency of a running worker under paced live load (the last phase of ``bench worker``).

Why paced and stamped with the scheduled time: a load generator that waits for acknowledgements, or stamps
an event when it finally sends it, hides the worker's delay (coordinated omission); docs/benchmarks.md
tells how each fault was found.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, TopicPartition

from agents.kafka_batches import BatchSender
from bench.worker_harness import WorkerProcess, input_topics, wait_consumed
from bench.workload import Encoded, Workload, encode
from schemas.registry import default_registry
from streams.broker import aiokafka_client_config
from streams.settings import Settings


def paced_latency(
    settings: Settings, worker: WorkerProcess, workload: Workload, rate: float, seconds: float, already: int
) -> dict[str, Any]:
    """Produce live events at ``rate``/s for ``seconds``; match their lead_score outputs by trigger id.

    Only events that name a ``lead_id`` are measured. An anonymous visitor's event is scored when the visitor
    is identified, which in the workload may be seconds later (its score then names the original event as
    trigger), so its delay measures the traffic, not the worker. Counting them made the p99 ~5 s and the
    max ~15 s while identified events were all under 0.7 s (in-process run, 4k events/s)."""
    registry = default_registry()
    events = workload.take(max(1, int(rate * seconds)), live=True)
    anonymous = {str(record["event_id"]) for _, record in events if not record.get("lead_id")}
    records = encode(events, registry)
    sent_at, achieved = asyncio.run(paced_send(settings, records, rate))
    since = min(sent_at.values())
    wait_consumed(worker, input_topics(settings), already + len(records), budget_s=60)
    time.sleep(1.5)  # outputs of the last batch: producer linger + flush on commit
    latencies = sorted(
        ts - sent_at[trigger]
        for trigger, ts in score_timestamps(settings, since)
        if trigger in sent_at and trigger not in anonymous
    )
    result: dict[str, Any] = {
        "rate": rate,
        "achieved_rate": achieved,
        "seconds": seconds,
        "sent": len(records),
        "anonymous": len(anonymous),
        "matched": len(latencies),
    }
    if latencies:
        result.update(
            p50_ms=percentile(latencies, 0.50), p99_ms=percentile(latencies, 0.99), max_ms=latencies[-1]
        )
    return result


async def paced_send(settings: Settings, records: list[Encoded], rate: float) -> tuple[dict[str, int], float]:
    """Send ``records`` at ``rate``/s: every 5 ms tick, the records due by then as one producer batch per
    partition (the worker's ``BatchSender``), without waiting for the previous tick's acknowledgements.
    Returns each event id's scheduled send time (ms; a tick that runs late does not hide its delay) and the
    achieved rate.

    Why not the SDK producer: kafka-python costs ~150-200 us of CPU a record, so at half the worker's maximum
    the load generator used more CPU (62-80% of a core, measured with top) than the worker it measured,
    and on two cores shared with the broker the latency measured that contention."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", linger_ms=0, **aiokafka_client_config(settings)
    )
    await producer.start()
    sender = BatchSender(producer)
    sent_at: dict[str, int] = {}
    in_flight: list[asyncio.Task[None]] = []
    try:
        start, wall_start_ms = time.monotonic(), time.time() * 1000
        done = 0
        while done < len(records):
            due = min(len(records), int((time.monotonic() - start) * rate) + 1)
            if due > done:
                for i in range(done, due):  # the scheduled time: a late tick counts against the worker
                    sent_at.setdefault(records[i].event_id, int(wall_start_ms + i * 1000 / rate))
                chunk = [(settings.topic(r.topic), r.key, r.value, None, None) for r in records[done:due]]
                in_flight.append(asyncio.create_task(sender.send(chunk)))  # acks awaited at the end
                done = due
            await asyncio.sleep(0.005)
        await asyncio.gather(*in_flight)
        achieved = len(records) / (time.monotonic() - start)
    finally:
        for task in in_flight:
            task.cancel()
        await producer.stop()
    return sent_at, achieved


def percentile(ordered: list[int], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def read_scores(
    settings: Settings, since_ms: int = 0, idle_s: float = 1.5
) -> Iterable[tuple[int, dict[str, Any]]]:
    """(Kafka timestamp, decoded record) of every ``leads.scores`` record stamped at or after ``since_ms``."""
    registry = default_registry()
    topic = settings.topic("leads.scores")
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_s or any(
            consumer.position(tp) < (consumer.highwater(tp) or 0) for tp in tps
        ):
            batch = consumer.poll(timeout_ms=200, max_records=10_000)
            if batch:
                idle_since = time.monotonic()
            for messages in batch.values():
                for m in messages:
                    if m.timestamp >= since_ms and m.value:
                        yield m.timestamp, registry.decode(m.value, expect="lead_score")[1]
    finally:
        consumer.close()


def score_timestamps(settings: Settings, since_ms: int) -> Iterable[tuple[str, int]]:
    for ts, record in read_scores(settings, since_ms):
        yield str(record["trigger_event_id"]), ts


def final_stages(settings: Settings) -> dict[str, str]:
    """Each lead's stage in its newest ``leads.scores`` record (every stage change emits a score)."""
    return {str(record["lead_id"]): str(record["stage"]) for _, record in read_scores(settings)}
