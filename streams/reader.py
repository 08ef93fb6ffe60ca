"""Read a topic back (from the beginning up to its current end), decoding each record with the registry.

Used by the CLI (``rescore`` from a topic, ``dlq``, ``forget``'s profile links) and tests. Decoding failures
are yielded as values, not raised: a poison record must never stop a reader.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from schemas.errors import SchemaError
from schemas.registry import SchemaRegistry, default_registry
from streams.broker import kafka_client_config
from streams.erasures import identities, read_all
from streams.event_hygiene import InadmissibleEvent, check_admissible
from streams.kafka_close import close_kafka_consumer
from streams.settings import Settings
from streams.topics import INPUTS


@dataclass(frozen=True)
class Decoded:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    schema: str
    record: dict[str, Any]
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp: int = 0  # the Kafka record timestamp, ms


@dataclass(frozen=True)
class Undecodable:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: SchemaError

    @property
    def reason(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}: {type(self.error).__name__}: {self.error}"


class NotDrained(TimeoutError):
    """``drain_topics`` read for ``max_seconds`` without reaching the end of every partition."""


def drain_topics(
    settings: Settings,
    topics: Iterable[str],
    *,
    bootstrap: str | None = None,
    idle_ms: int = 1500,
    max_seconds: float = 120.0,
) -> Generator[ConsumerRecord, None, None]:
    """Every record of ``topics`` (already prefixed), tombstones included, from offset 0 until drained, in
    offset order per partition; raises ``NotDrained`` after ``max_seconds``.

    Drained = each partition's position reached its fetch high watermark and nothing new arrived for
    ``idle_ms``. The high watermark comes from fetch responses, which Tansu reports correctly. One consumer
    (no group) reads every topic: a consumer per topic costs ~0.9 s (measured), a lot for a check reading
    several. Its close is bounded (``streams.kafka_close.close_kafka_consumer``), so a generator abandoned
    after its broker stopped does not hang whoever finalizes it."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap or settings.bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        **kafka_client_config(settings),
    )
    try:
        names = list(topics)
        tps = [TopicPartition(t, p) for t in names for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + max_seconds
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200, max_records=5000)
            if batch:
                idle_since = time.monotonic()
            for messages in batch.values():
                yield from messages
            if not batch and (time.monotonic() - idle_since) * 1000 >= idle_ms:
                # A partition with no fetch response yet (high watermark unknown) is not read: under load
                # the first response can take longer than ``idle_ms``, and counting it as drained returned
                # nothing at all (a CI run read an empty leads.hot that held 8 records).
                caught_up = all(
                    (high := consumer.highwater(tp)) is not None and consumer.position(tp) >= high
                    for tp in tps
                )
                if caught_up:
                    return
        raise NotDrained(f"{', '.join(names)} not read to their end within {max_seconds} s")
    finally:
        close_kafka_consumer(consumer)


def read_topic(
    settings: Settings,
    topic: str,
    *,
    bootstrap: str | None = None,
    idle_ms: int = 1500,
    registry: SchemaRegistry | None = None,
    max_seconds: float = 120.0,
) -> Iterator[Decoded | Undecodable]:
    """Every record on ``topic`` (already prefixed) from offset 0 until the partitions are drained
    (``drain_topics``), decoded; after ``max_seconds`` what was read so far.

    Tombstones (null values, e.g. an erased lead's key on ``leads.scores``) are skipped.
    """
    registry = registry or default_registry()
    records = drain_topics(settings, [topic], bootstrap=bootstrap, idle_ms=idle_ms, max_seconds=max_seconds)
    with contextlib.closing(records):
        try:
            for msg in records:
                if msg.value is None:  # a tombstone on a compacted topic: a deletion, not a record
                    continue
                try:
                    schema, record = registry.decode(msg.value)
                except SchemaError as exc:
                    yield Undecodable(msg.topic, msg.partition, msg.offset, msg.key, msg.value, exc)
                    continue
                headers = tuple(msg.headers or ())
                yield Decoded(
                    msg.topic, msg.partition, msg.offset, msg.key, schema, record, headers, msg.timestamp
                )
        except NotDrained:
            return


@dataclass
class InputHistory:
    events: list[tuple[str, dict[str, Any]]]
    skipped: list[str]  # "topic[p]@offset: problem" of each record the worker dead-letters
    erased: int  # records of identities erased with `leadpulse forget` (dropped, as the worker does)


def read_input_history(
    settings: Settings, topics: list[str], keep: Callable[[tuple[str, dict[str, Any]]], None] | None = None
) -> InputHistory:
    """``(schema, record)`` of every input record the worker scores, from the given (prefixed) topics, in
    event-time order.

    Why event-time order: records of one lead on different topics have no common offset order; the worker
    sees them in arrival order and the core scores by event time, so event time is the faithful replay.
    What the worker dead-letters (undecodable bytes, another topic's schema, no identity, from the future)
    is left out, and a line naming it is appended to ``skipped``. Records of erased identities are dropped
    and only counted (DESIGN §10: a replay does not bring an erased lead back).

    ``keep`` takes each record instead of ``events`` (then left empty): ``rescore`` holds months of topics
    as Avro bytes (``agents.rescore_history``) and sorts them itself: a list of decoded records did not
    fit."""
    by_topic = {settings.topic(spec.name): spec.schema for spec in INPUTS}
    gone: set[str] = set()
    for erasure in read_all(settings):
        gone |= identities(erasure)
    history = InputHistory([], [], 0)
    events, skipped = history.events, history.skipped
    keep = keep or events.append
    for topic in topics:
        expected = by_topic[topic]
        for item in read_topic(settings, topic, idle_ms=500):
            where = f"{item.topic}[{item.partition}]@{item.offset}"
            if isinstance(item, Undecodable):
                problem: str | None = f"{type(item.error).__name__}: {item.error}"
            elif item.schema != expected:
                problem = f"a {item.schema} record on a topic of {expected} records"
            else:
                try:
                    check_admissible(item.record, item.timestamp or int(time.time() * 1000))
                    problem = None
                except InadmissibleEvent as exc:
                    problem = str(exc)
            if problem is not None:
                skipped.append(f"{where}: {problem}")
                continue
            assert isinstance(item, Decoded)
            if gone and (item.record.get("lead_id") in gone or item.record.get("anonymous_id") in gone):
                history.erased += 1
                continue
            keep((item.schema, item.record))
    events.sort(key=lambda e: int(e[1].get("event_time") or 0))
    return history
