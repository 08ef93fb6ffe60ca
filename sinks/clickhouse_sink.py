"""The sink process: consume every input and output topic, batch rows per table, insert into ClickHouse,
then commit. A dedicated kafka-python consumer, not a Faust agent (argued in docs/clickhouse.md).

Why aiokafka: measured here, kafka-python 3 consumes ~27k records/s (~85k with CRC checks off) against
aiokafka's ~300k/s, and the consumer would otherwise be the sink's ceiling. Inserts run in a worker thread
so that a slow ClickHouse never starves the consumer's heartbeats.

The loop's contract (DESIGN §7, STYLE "commit after durable"):
- offsets move only after the rows below them are inserted (or dead-lettered and the DLQ flushed);
- ClickHouse down or overloaded: pause every partition, wait the backoff, re-send the identical batch
  (same dedup token); nothing is committed meanwhile and the process never exits for it;
- rows ClickHouse rejects as invalid, and records that cannot be decoded, go to the ``dlq`` topic;
- on (re)assignment it resumes after the highest offset already stored per partition, so a crash between
  insert and commit does not store a batch twice even if the re-read batch is cut differently;
- records of leads erased with ``leadpulse forget`` (the erasure log, ``streams.erasures``) are dropped
  before insert, so a replay cannot bring them back; with embedded ClickHouse the sink owns the engine and
  also deletes the lead's stored rows when an erasure arrives (``sinks.erase``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from clickhouse_connect.driver.client import Client

from schemas.fast_codec import zigzag
from schemas.registry import HEADER_LEN, SOE_MAGIC, SchemaError, SchemaRegistry, default_registry
from sinks.avro_ocf import ContainerFormat, container_format, origin_prefix
from sinks.batch import BatchPolicy, ClickHouseBatchSink
from sinks.clickhouse import EmbeddedDirectoryUnusable, EmbeddedEngineBusy
from sinks.erase import already_applied, apply_erasure, event_head, record_erased
from sinks.errors import SinkBackpressure
from sinks.recent_ids import RecentIds
from sinks.replay import is_replayed
from sinks.rows import EVENT_TYPES, EVENTS, TABLE_FOR_SCHEMA, Origin, TableSpec, to_row
from streams.broker import aiokafka_client_config
from streams.dlq import dead_letter, encode_dead_letter, writer_headers
from streams.erasures import ErasureLog
from streams.event_hygiene import InadmissibleEvent, check_admissible, future_problem
from streams.kafka_close import STOP_TIMEOUT_S, commit, group_commits, start_client, stop_consumer
from streams.metrics import LagGauge, consumer_lags
from streams.settings import Settings
from streams.topics import INPUTS, MAX_INPUT_RECORD_BYTES, OUTPUTS, spec_for

log = logging.getLogger(__name__)

SINK_TOPICS = INPUTS + OUTPUTS
DLQ_HEADERS = writer_headers("sink")
#: How long a restarting sink waits to read the record at each highest stored offset (``_same_log_only``).
SAME_LOG_READ_S = 5.0
#: How often the sink reports its consumer lag, whatever its inserts do (as the worker does).
LAG_REPORT_S = 5.0
#: The ``table`` label of ``leadpulse_sink_failures_total{kind="unavailable"}``: ClickHouse could not be
#: reached or migrated at start, so no insert into any table can be tried.
UNAVAILABLE_TABLE = "all"


#: Catalogue name of the sink's consumer group, and its ``group`` label on the lag metric whatever the prefix
#: (LeadpulseSinkStalled matches ``group="leadpulse-sink"``; the group itself carries the topic prefix).
SINK_GROUP = "leadpulse-sink"


def sink_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}{SINK_GROUP}"


@dataclass
class SinkStats:
    consumed: int = 0
    inserted: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    erased: int = 0
    duplicates: int = 0
    failures: int = 0
    commits: int = 0
    last_success: float = 0.0
    assigned: set[tuple[str, int]] = field(default_factory=set)


class SinkHooks:
    """Metric seam: the default does nothing; ``MetricsHooks`` feeds ``streams.metrics.Metrics``."""

    def inserted(self, table: str, rows: int, seconds: float, failure: str | None) -> None: ...
    def dead_lettered(self, source_topic: str, stage: str) -> None: ...
    def lags(self, group: str, lags: dict[tuple[str, int], int]) -> None: ...
    def erased(self, table: str, rows: int) -> None: ...
    def duplicate(self, table: str) -> None: ...


class MetricsHooks(SinkHooks):
    def __init__(self, metrics: Any) -> None:
        self.m = metrics
        self._lag_gauges: dict[str, LagGauge] = {}

    def inserted(self, table: str, rows: int, seconds: float, failure: str | None) -> None:
        self.m.sink_insert_seconds.observe(seconds)
        if failure is None:
            self.m.sink_rows.labels(table=table).inc(rows)
            self.m.sink_batches.labels(table=table).inc()
            self.m.sink_last_success.set(time.time())
        else:
            self.m.sink_failures.labels(table=table, kind=failure).inc()

    def dead_lettered(self, source_topic: str, stage: str) -> None:
        self.m.dlq_records.labels(source_topic=source_topic, stage=stage).inc()

    def lags(self, group: str, lags: dict[tuple[str, int], int]) -> None:
        gauge = self._lag_gauges.get(group)
        if gauge is None:
            gauge = self._lag_gauges[group] = LagGauge(self.m.consumer_lag, group)
        gauge.report(lags)

    def erased(self, table: str, rows: int) -> None:
        self.m.sink_rows_erased.labels(table=table).inc(rows)

    def duplicate(self, table: str) -> None:
        self.m.sink_duplicates.labels(table=table).inc()


def stored_positions(
    client: Client, tables: Iterable[TableSpec], topics: list[str]
) -> dict[tuple[str, int], int]:
    """Highest offset already stored per (topic, partition), read from the tables' origin columns."""
    found: dict[tuple[str, int], int] = {}
    for table in tables:
        result = client.query(
            f"SELECT topic, partition, max(offset) FROM {table.qualified} "
            "WHERE topic IN {topics:Array(String)} GROUP BY topic, partition",
            parameters={"topics": topics},
        )
        for topic, partition, offset in result.result_rows:
            key = (str(topic), int(partition))
            found[key] = max(found.get(key, -1), int(offset))
    return found


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Records what a rebalance changed; the loop acts on it between fetches (see ``_apply_rebalance``),
    so a rebalance never runs concurrently with a batch being written."""

    def __init__(self) -> None:
        self.revoked: set[tuple[str, int]] = set()
        self.assigned: set[tuple[str, int]] = set()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.revoked.update((tp.topic, tp.partition) for tp in revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned.update((tp.topic, tp.partition) for tp in assigned)


class ClickHouseSinkLoop:
    """One consumer, one batch sink, one DLQ producer. ``run(stop_event)`` blocks until the event is set."""

    def __init__(
        self,
        settings: Settings,
        client: Client,
        *,
        policy: BatchPolicy | None = None,
        hooks: SinkHooks | None = None,
        registry: SchemaRegistry | None = None,
        max_poll_records: int = 20_000,
        fast_path: bool = True,
    ) -> None:
        self.settings = settings
        self.client = client
        self.hooks = hooks or SinkHooks()
        self.registry = registry or default_registry()
        self.email_key = settings.email_hash_key.get_secret_value().encode()
        self.sink = ClickHouseBatchSink(client, policy, on_insert=self.hooks.inserted)
        self.group = sink_group(settings)
        self.topics = [settings.topic(t.name) for t in SINK_TOPICS]
        self._input_topics = {settings.topic(t.name) for t in INPUTS}
        self.stats = SinkStats()
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.skip_through: dict[tuple[str, int], int] = {}
        self.recent = RecentIds(settings.sink_recent_ids)
        self.retry_at: float | None = None
        self.max_poll_records = max_poll_records
        self.fast_path = fast_path
        self._listener = _Listener()
        self._next_lag = 0.0
        self._producer: Any = None
        self.consumer: AIOKafkaConsumer | None = None
        # Erasures: read at start, tailed while running; applied to ClickHouse here only when this process
        # owns the embedded engine (otherwise `leadpulse forget` deletes on the server itself).
        self.erasures: ErasureLog | None = None
        self.apply_erasures = settings.embedded_clickhouse
        self._pending_erasures: list[dict[str, Any]] = []
        # Per topic: (catalogue schema, its current writer fingerprint, container format if fast path).
        self._topic_info: dict[str, tuple[str, int, ContainerFormat | None]] = {}
        for spec in SINK_TOPICS:
            current = self.registry.schema(spec.schema)
            fmt = (
                container_format(spec.schema, current.raw)
                if fast_path and spec.schema in EVENT_TYPES
                else None
            )
            self._topic_info[settings.topic(spec.name)] = (spec.schema, current.fingerprint, fmt)

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> SinkStats:
        asyncio.run(self.run_async(stop))
        return self.stats

    async def run_async(self, stop: threading.Event) -> None:
        config = aiokafka_client_config(self.settings)
        self.erasures = ErasureLog(self.settings)
        await self.erasures.start()  # first: an aiokafka client never started still complains "Unclosed"
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **config,
        )
        self.consumer.subscribe(self.topics, listener=self._listener)
        try:
            await start_client(self.consumer)
            while not stop.is_set():
                await self.step()
            await self.drain()
        finally:
            await stop_consumer(self.consumer)
            await self.erasures.stop()
            if self._producer is not None:  # dead letters: bounded like the consumer's close
                await asyncio.to_thread(self._producer.close, STOP_TIMEOUT_S)

    async def step(self, poll_ms: int = 200) -> None:
        assert self.consumer is not None
        if self.retry_at is not None:
            wait = self.retry_at - time.monotonic()
            if wait > 0:
                await self.consumer.getmany(timeout_ms=int(min(wait, 0.5) * 1000))  # paused: nothing returned
                await self._apply_rebalance()
                self._report_lag_due()
                return
        else:
            records = await self.consumer.getmany(timeout_ms=poll_ms, max_records=self.max_poll_records)
            await self._apply_rebalance()
            for tp, messages in records.items():
                if (tp.topic, tp.partition) in self.stats.assigned:
                    self._take(tp, messages)
        self._report_lag_due()
        try:
            await self._flush()
            await self._apply_erasures()
        except SinkBackpressure as exc:
            log.warning("%s", exc)
            self.stats.failures += 1
            self.retry_at = time.monotonic() + exc.retry_after
            self.consumer.pause(*self.consumer.assignment())

    async def drain(self) -> None:
        """On shutdown: one last attempt to store and commit what is batched; if it fails, leave it
        uncommitted (it is re-read on restart)."""
        try:
            await self._flush(force=True)
        except SinkBackpressure as exc:
            log.warning("shutdown with unflushed batches, they will be re-read: %s", exc)

    # --- erasures ---------------------------------------------------------------------------------------
    async def _apply_erasures(self) -> None:
        """Delete newly erased leads from the embedded engine this process owns. Rows of the lead taken
        before the erasure arrived are flushed first, so the deletion removes them too."""
        if self.erasures is None:
            return
        self._pending_erasures.extend(self.erasures.drain_new())
        if not self.apply_erasures:
            self._pending_erasures.clear()
            return
        if not self._pending_erasures:
            return
        await self._flush(force=True)
        while self._pending_erasures:
            record = self._pending_erasures[0]
            try:
                await asyncio.to_thread(self._apply_erasure, record)
            except Exception as exc:  # ClickHouse busy/away: keep it pending, back off like an insert
                raise SinkBackpressure("erasures", 5.0, exc) from exc
            self._pending_erasures.pop(0)

    def _apply_erasure(self, record: dict[str, Any]) -> None:
        if already_applied(self.client, record):
            return
        result = apply_erasure(self.client, record, applied_by="sink")
        log.info("erasure %s applied: %d row(s) deleted", result.erasure_id, result.total)

    def _erased(self, table: str) -> None:
        self.stats.erased += 1
        self.hooks.erased(table, 1)

    # --- rebalance -------------------------------------------------------------------------------------
    async def _apply_rebalance(self) -> None:
        assert self.consumer is not None
        listener = self._listener
        if listener.revoked:
            # Uncommitted batches of revoked partitions are dropped, not flushed: their next owner re-reads
            # them from the committed offset and skips whatever part of them an earlier insert stored.
            revoked, listener.revoked = listener.revoked, set()
            if any(tp in revoked for batch in self.sink.batches.values() for tp in batch.segments):
                log.info("rebalance: dropping %d uncommitted batch(es)", len(self.sink.batches))
                self.sink.batches.clear()
                self.retry_at = None
                self.consumer.resume(*self.consumer.assignment())
            for tp in revoked:
                self.recent.drop_partition(tp)
                self.next_offsets.pop(tp, None)
                self.committed.pop(tp, None)
                self.skip_through.pop(tp, None)
        self.stats.assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        if listener.assigned:
            assigned, listener.assigned = listener.assigned, set()
            stored = await asyncio.to_thread(self._stored_for, assigned)
            self.skip_through.update(await self._same_log_only(stored))
            await self._load_commits(assigned)

    def _stored_for(self, assigned: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Highest stored offset of each newly assigned partition: records up to it are already in
        ClickHouse (a crash between insert and commit) and are skipped, not inserted a second time."""
        prefix = self.settings.topic_prefix
        tables = {TABLE_FOR_SCHEMA[spec_for(t, prefix).schema].table for t, _ in assigned}
        specs = [TABLE_FOR_SCHEMA_BY_TABLE[name] for name in sorted(tables)]
        stored = stored_positions(self.client, specs, sorted({t for t, _ in assigned}))
        return {tp: offset for tp, offset in stored.items() if tp in assigned}

    async def _load_commits(self, assigned: set[tuple[str, int]]) -> None:
        """The group's committed offset of each newly assigned partition, so the lag metric is right from
        the start (it counted from 0 for a partition with nothing new since a restart: a false lag of the
        partition's whole length, and a false LeadpulseSinkStalled)."""
        assert self.consumer is not None
        found = await group_commits(self.consumer, (TopicPartition(t, p) for t, p in assigned)) or {}
        for tp, offset in found.items():
            self.committed.setdefault((tp.topic, tp.partition), offset)

    async def _same_log_only(self, stored: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """``stored`` without the partitions whose log is not the one the rows were read from.

        The record now at each partition's highest stored offset is read and its id (the table's first
        column: event_id, transition_id, ...) compared with the stored row's. A different id means another
        log (the topic recreated, or the embedded broker restarted and counting from 0 again) that has
        already grown past the old one's end: skipping would drop that many new records without a word.
        When the record cannot be read (compacted away, log shorter: see ``_check_same_log``), the positions
        are kept: skipping is what keeps a crash between insert and commit from storing rows twice."""
        if not stored:
            return stored
        now_at = await self._records_at(stored)
        if not now_at:
            return stored
        ids = await asyncio.to_thread(self._stored_ids, {tp: stored[tp] for tp in now_at})
        kept = dict(stored)
        for tp, value in now_at.items():
            stored_id = ids.get(tp)
            log_id = self._first_column(tp, stored[tp], value)
            if stored_id is None or log_id is None or log_id == stored_id:
                continue
            log.warning(
                "%s[%d]: offset %d holds %s in ClickHouse but %s in the log: a new log (topic recreated or "
                "broker restarted), so nothing is skipped as already stored",
                tp[0],
                tp[1],
                stored[tp],
                stored_id,
                log_id,
            )
            del kept[tp]
        return kept

    async def _records_at(self, positions: dict[tuple[str, int], int]) -> dict[tuple[str, int], bytes]:
        """The value of the record at each position, for those that can be read within a few seconds."""
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            **aiokafka_client_config(self.settings),
        )
        found: dict[tuple[str, int], bytes] = {}
        await start_client(reader)
        try:
            reader.assign([TopicPartition(t, p) for t, p in positions])
            for (t, p), offset in positions.items():
                reader.seek(TopicPartition(t, p), offset)
            pending = set(positions)
            deadline = time.monotonic() + SAME_LOG_READ_S
            while pending and time.monotonic() < deadline:
                fetched = await reader.getmany(timeout_ms=200, max_records=len(positions))
                for tp, messages in fetched.items():
                    key = (tp.topic, tp.partition)
                    if key in pending and messages:
                        pending.discard(key)
                        reader.pause(tp)
                        if messages[0].offset == positions[key] and messages[0].value is not None:
                            found[key] = messages[0].value
                for key in list(pending):  # a log that ends at or before the position has no record there
                    high = reader.highwater(TopicPartition(*key))
                    if high is not None and high <= positions[key]:
                        pending.discard(key)
        finally:
            await stop_consumer(reader)
        return found

    def _stored_ids(self, positions: dict[tuple[str, int], int]) -> dict[tuple[str, int], str]:
        """The first column (the row's id) of the row stored at each position."""
        prefix = self.settings.topic_prefix
        by_table: dict[str, list[tuple[str, int, int]]] = {}
        for (topic, partition), offset in positions.items():
            table = TABLE_FOR_SCHEMA[spec_for(topic, prefix).schema]
            by_table.setdefault(table.table, []).append((topic, partition, offset))
        ids: dict[tuple[str, int], str] = {}
        for name, wanted in by_table.items():
            spec = TABLE_FOR_SCHEMA_BY_TABLE[name]
            result = self.client.query(
                f"SELECT topic, partition, toString({spec.columns[0]}) FROM {spec.qualified} "
                "WHERE (topic, partition, offset) IN {wanted:Array(Tuple(String, UInt32, UInt64))}",
                parameters={"wanted": wanted},
            )
            for topic, partition, row_id in result.result_rows:
                ids[(str(topic), int(partition))] = str(row_id)
        return ids

    def _first_column(self, tp: tuple[str, int], offset: int, value: bytes) -> str | None:
        """The id the sink would store for this record, or None when it does not decode."""
        try:
            schema, record = self.registry.decode(value)
            _table, row = to_row(schema, record, Origin(tp[0], tp[1], offset), self.email_key)
        except (SchemaError, KeyError, TypeError, ValueError):
            return None
        return str(row[0])

    def _check_same_log(self, tp: TopicPartition, skip_through: int) -> int:
        """The stored rows name offsets of the log they were read from. A log that ends at or before the
        highest of them is another log: the topic was recreated, or the embedded broker (memory storage)
        restarted and counts from 0 again. Skipping would then drop that many new records without a word
        (seen: a second demo stored 80 of 9,655 events), so the stored positions are ignored for it.
        The fetch high watermark is used, not ListOffsets, which Tansu answers short (DESIGN §11). A new log
        that has already grown past the old one's end is caught by ``_same_log_only``."""
        assert self.consumer is not None
        high = self.consumer.highwater(tp)
        if high is None or high > skip_through:
            return skip_through
        log.warning(
            "%s[%d]: ClickHouse holds rows up to offset %d but the log ends at %d: a new log (topic "
            "recreated or broker restarted), so nothing is skipped as already stored",
            tp.topic,
            tp.partition,
            skip_through,
            high,
        )
        self.skip_through.pop((tp.topic, tp.partition), None)
        return -1

    # --- records -----------------------------------------------------------------------------------------
    def _take(self, tp: TopicPartition, messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        key_tp = (tp.topic, tp.partition)
        expected, fingerprint, fmt = self._topic_info[tp.topic]
        skip_through = self.skip_through.get(key_tp, -1)
        if skip_through >= 0 and messages:
            skip_through = self._check_same_log(tp, skip_through)
        if messages and messages[0].offset < self.committed.get(key_tp, messages[0].offset + 1):
            # Where the group's position started: committing it again would be a no-op. (Also when the
            # position went back below the loaded commit: a reset to a new, shorter log must commit again.)
            self.committed[key_tp] = messages[0].offset
        prefix = origin_prefix(expected, tp.topic, tp.partition) if fmt is not None else b""
        current_header = SOE_MAGIC + struct.pack("<Q", fingerprint)
        self.stats.consumed += len(messages)
        erasures = self.erasures if self.erasures is not None and self.erasures.active else None
        # Offsets from here on are not stored yet (this call's records, an earlier unwritten batch's):
        # a copy of an id first taken there is stored too, since that first copy may yet be refused.
        first_offset = messages[0].offset if messages else 0
        unwritten = min(self.sink.open_offsets().get(key_tp, first_offset), first_offset)
        for msg in messages:
            self.next_offsets[key_tp] = msg.offset + 1
            if msg.offset <= skip_through:
                continue
            if msg.value is None:  # a tombstone on a compacted output (e.g. an erased lead's score)
                continue
            if msg.headers and is_replayed(msg.headers):  # read from ClickHouse by `leadpulse replay`
                self._duplicate(TABLE_FOR_SCHEMA[expected])
                continue
            value = msg.value
            if tp.topic in self._input_topics and len(value) > MAX_INPUT_RECORD_BYTES:
                limit = MAX_INPUT_RECORD_BYTES
                reason = f"record of {len(value)} bytes exceeds the {limit}-byte input event limit"
                self._dead_letter(
                    tp.topic, tp.partition, msg.offset, msg.key, value, "validate", "ValueError", reason
                )
                continue
            # (no identity read from the body: a truncated or anonymous-and-leadless record; the full decode
            # below names which, as a dead letter)
            event_id, event_time, *identities = (
                event_head(value[HEADER_LEN:]) if fmt is not None else (None, None, None, None)
            )
            if fmt is not None and value[:HEADER_LEN] == current_header and any(identities):
                problem = future_problem(event_time, msg.timestamp or int(time.time() * 1000))
                if problem is not None:
                    self._inadmissible(tp, msg, InadmissibleEvent("future_event", f"event_time: {problem}"))
                    continue
                if erasures is not None and any(map(erasures.is_erased, identities)):
                    self._erased(EVENTS.table)
                    continue
                if event_id is None or not self._stored_lately(key_tp, event_id, msg.offset, unwritten):
                    # Fast path: the current writer schema; ClickHouse decodes the body itself.
                    body = value[HEADER_LEN:] + prefix + zigzag(msg.offset)
                    self.sink.add(EVENTS, (body, tp.topic, tp.partition, msg.offset), msg.key, msg.value, fmt)
                    continue
                # A stored id. Only bytes that decode are a re-send: a poison record that happens to
                # start with a stored event_id (a producer writing a wrong schema under the topic's
                # fingerprint) is dead-lettered below like any undecodable record, not dropped.
                if self._decodes(value, expected):
                    self._duplicate(EVENTS)
                    continue
            try:
                schema, record = self.registry.decode(value, expect=expected)
                if tp.topic in self._input_topics:
                    try:
                        check_admissible(record, msg.timestamp or int(time.time() * 1000))
                    except InadmissibleEvent as exc:
                        self._inadmissible(tp, msg, exc)
                        continue
                if erasures is not None and record_erased(schema, record, erasures.is_erased):
                    self._erased(TABLE_FOR_SCHEMA[schema].table)
                    continue
                if fmt is not None:  # an older writer version: resolve in Python, ship as current
                    if self._stored_lately(key_tp, record["event_id"], msg.offset, unwritten):
                        self._duplicate(EVENTS)
                        continue
                    body = self.registry.encode(schema, record)[HEADER_LEN:] + prefix + zigzag(msg.offset)
                    self.sink.add(EVENTS, (body, tp.topic, tp.partition, msg.offset), msg.key, msg.value, fmt)
                    continue
                table, row = to_row(
                    schema, record, Origin(tp.topic, tp.partition, msg.offset), self.email_key
                )
            except (SchemaError, KeyError, TypeError, ValueError) as exc:
                self._dead_letter(
                    tp.topic,
                    tp.partition,
                    msg.offset,
                    msg.key,
                    msg.value,
                    "decode",
                    type(exc).__name__,
                    str(exc),
                )
                continue
            if table.keyed_by_id and self._stored_lately(key_tp, str(row[0]), msg.offset, unwritten):
                self._duplicate(table)
                continue
            self.sink.add(table, row, msg.key, msg.value)

    def _stored_lately(self, tp: tuple[str, int], record_id: str, offset: int, unwritten: int) -> bool:
        """Whether a copy of the record was stored lately from its partition: then this one is a re-send
        and is not stored (the daily views would count it twice; counted, its offset committed like any
        other). Otherwise the record is remembered as taken here."""
        first = self.recent.first_offset(tp, record_id)
        if first is None:
            self.recent.take(tp, record_id, offset)
            return False
        return first < unwritten  # the first copy is still in a batch: store this one as well

    def _decodes(self, value: bytes, expected: str) -> bool:
        try:
            self.registry.decode(value, expect=expected)
        except SchemaError:
            return False
        return True

    def _duplicate(self, table: TableSpec) -> None:
        self.stats.duplicates += 1
        self.hooks.duplicate(table.table)

    async def _flush(self, force: bool = False) -> None:
        wrote = False
        for batch in self.sink.due(force=force):
            rejected = await asyncio.to_thread(self.sink.write, batch)  # raises SinkBackpressure
            table = batch.table.table
            self.stats.inserted[table] = self.stats.inserted.get(table, 0) + batch.size - len(rejected)
            for bad in rejected:
                # Not stored, so a corrected re-send of it is not a duplicate.
                if batch.table.keyed_by_id and bad.value is not None:
                    record_id = (
                        event_head(bad.value[HEADER_LEN:])[0]  # may not decode: read like the fast path
                        if batch.table is EVENTS
                        else self._first_column((bad.topic, bad.partition), bad.offset, bad.value)
                    )
                    if record_id is not None:
                        self.recent.forget((bad.topic, bad.partition), record_id, bad.offset)
                self._dead_letter(
                    bad.topic,
                    bad.partition,
                    bad.offset,
                    bad.key,
                    bad.value,
                    "sink",
                    bad.error_type,
                    bad.reason,
                )
            wrote = True
        if wrote:
            self.stats.last_success = time.time()
        if self.retry_at is not None:
            self.retry_at = None
            assert self.consumer is not None
            self.consumer.resume(*self.consumer.assignment())
        await self._commit()

    def _inadmissible(
        self, tp: TopicPartition, msg: ConsumerRecord[bytes, bytes], exc: InadmissibleEvent
    ) -> None:
        """An event the worker also refuses (no identity, from the future): not history, a dead letter."""
        self._dead_letter(
            tp.topic, tp.partition, msg.offset, msg.key, msg.value, "validate", type(exc).__name__, str(exc)
        )

    def _dead_letter(
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
        self.stats.dead_lettered += 1
        self.hooks.dead_lettered(spec_for(topic, self.settings.topic_prefix).name, stage)

    async def _commit(self) -> None:
        """Commit, per partition, the offset below which everything is stored or dead-lettered."""
        assert self.consumer is not None
        held = self.sink.open_offsets()
        todo: dict[TopicPartition, int] = {}
        for key_tp, next_offset in self.next_offsets.items():
            safe = min(next_offset, held.get(key_tp, next_offset))
            if self.committed.get(key_tp, -1) < safe and key_tp in self.stats.assigned:
                todo[TopicPartition(*key_tp)] = safe
        if not todo:
            return
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush)  # dead letters durable before skipping them
        try:
            await commit(self.consumer, todo)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # A rebalance moved the partitions: their next owner resumes from the stored rows.
            log.warning("offset commit refused (%s); will be retried or re-read by the next owner", exc)
            return
        for tp, offset in todo.items():
            self.committed[(tp.topic, tp.partition)] = offset
        self.stats.commits += 1
        self._report_lag()

    def _report_lag_due(self) -> None:
        """Report the lag every ``LAG_REPORT_S``, not only after a commit: while inserts fail nothing is
        committed, and the gauge froze at its last value (often 0), so LeadpulseSinkStalled and
        LeadpulseConsumerLagGrowing could not fire during a ClickHouse outage (found by an ops audit).
        While the partitions are paused (backing off) their fetch high watermark is not refreshed, so the
        reported lag counts the records read before the pause, not those produced since."""
        if time.monotonic() >= self._next_lag:
            self._next_lag = time.monotonic() + LAG_REPORT_S
            self._report_lag()

    def _report_lag(self) -> None:
        assert self.consumer is not None
        done, prefix = self.committed, self.settings.topic_prefix
        lags = consumer_lags(
            self.consumer,
            lambda tp: done.get((tp.topic, tp.partition), 0),
            lambda topic: spec_for(topic, prefix).name,
        )
        self.hooks.lags(SINK_GROUP, lags)


TABLE_FOR_SCHEMA_BY_TABLE: dict[str, TableSpec] = {spec.table: spec for spec in TABLE_FOR_SCHEMA.values()}


def _connect(
    settings: Settings,
    stop_event: threading.Event,
    get_client: Callable[[Settings], Client],
    migrate: Callable[[Client], Any],
    on_failure: Callable[[], None] | None = None,
) -> Client | None:
    """Open and migrate ClickHouse, retrying with backoff while it is unreachable; ``on_failure`` is called
    for each failed attempt.

    Why not exit: a sink that dies when ClickHouse is away is restarted in a loop by its supervisor and
    floods the logs; nothing is consumed (so nothing committed) until ClickHouse answers, then it resumes
    from the committed offsets."""
    delay = 1.0
    while not stop_event.is_set():
        try:
            client = get_client(settings)
            migrate(client)
            return client
        except Exception as exc:  # connection refused, DNS, auth, a server starting up: all retried
            if isinstance(exc, EmbeddedEngineBusy | EmbeddedDirectoryUnusable):  # not transient
                raise
            if on_failure is not None:
                on_failure()
            first_line = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            log.warning(
                "ClickHouse at %s unavailable (%s: %s); retrying in %.0f s",
                settings.shown_dsn,
                type(exc).__name__,
                first_line,
                delay,
            )
            stop_event.wait(delay)
            delay = min(delay * 2, 30.0)
    return None


def run_sink(
    settings: Settings,
    stop_event: threading.Event,
    *,
    policy: BatchPolicy | None = None,
    metrics: Any = None,
    serve: bool = True,
    client: Client | None = None,
    on_started: Callable[[ClickHouseSinkLoop], None] | None = None,
) -> SinkStats:
    """Run the sink until ``stop_event`` is set: migrate, consume, insert, commit; serve ``/metrics``,
    ``/health``, ``/ready`` and (embedded ClickHouse) the read-only query API on ``settings.sink_port``."""
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from sinks.catalogue_service import add_catalogue_route
    from sinks.clickhouse import get_client
    from sinks.content_catalogue import load_entries
    from sinks.migrate import migrate
    from sinks.query_service import (
        HttpThread,
        QueryError,
        QueryResult,
        add_query_routes,
        client_runner,
        embedded_path,
    )
    from streams.metrics import Metrics
    from streams.web import add_ops_routes

    if metrics is None:
        metrics = Metrics(CollectorRegistry(), component="sink", process_metrics=True)
    if settings.default_email_hash_key and not settings.embedded_clickhouse:
        log.warning(
            "LEADPULSE_EMAIL_HASH_KEY is the shipped default: anyone with a list of emails can match the "
            "stored email hashes; set a random key before storing real data (docs/privacy.md)"
        )
    # Served from the start, so a sink waiting for ClickHouse answers /health and /metrics and says on /ready
    # what it waits for (an orchestrator probing a silent port restarts it in a loop).
    running: dict[str, Any] = {}

    def ready() -> tuple[bool, dict[str, Any]]:
        sink: ClickHouseSinkLoop | None = running.get("loop")
        if sink is None:
            return False, {"waiting_for": f"ClickHouse at {settings.shown_dsn}"}
        ok = bool(sink.stats.assigned) and sink.retry_at is None
        return ok, {
            "assigned_partitions": len(sink.stats.assigned),
            "backing_off": sink.retry_at is not None,
            "last_success": sink.stats.last_success,
        }

    def query(sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        runner = running.get("query")
        if runner is None:
            raise QueryError("the sink is still waiting for ClickHouse; try again when /ready says ready")
        result: QueryResult = runner(sql, parameters)
        return result

    def load_content(entries: list[dict[str, Any]], source: str) -> int:
        loader = running.get("content")
        if loader is None:
            raise QueryError("the sink is still waiting for ClickHouse; try again when /ready says ready")
        return int(loader(entries, source))

    http: HttpThread | None = None
    if serve:
        app = web.Application()
        add_ops_routes(app, metrics.registry, ready)
        if settings.embedded_clickhouse:
            add_query_routes(app, query, embedded_path(settings))
            add_catalogue_route(app, load_content)
        http = HttpThread(app, settings.web_host, settings.sink_port).start()
    own_client = client is None
    query_client: Client | None = None
    try:
        if client is None:
            # Each failed attempt counts as a failure of kind "unavailable" (table="all"): before, a sink that
            # could not reach ClickHouse at start exported no failure, no lag and last_success 0, so no alert
            # could fire (found by an ops audit); now LeadpulseSinkFailing does.
            unavailable = metrics.sink_failures.labels(table=UNAVAILABLE_TABLE, kind="unavailable")
            client = _connect(settings, stop_event, get_client, migrate, on_failure=unavailable.inc)
            if client is None:  # stopped while ClickHouse was still unreachable
                return SinkStats()
        else:
            migrate(client)
        loop = ClickHouseSinkLoop(settings, client, policy=policy, hooks=MetricsHooks(metrics))
        if serve and settings.embedded_clickhouse:
            query_client = get_client(settings)  # a second handle on the same engine, with its own lock
            guard = threading.Lock()  # queries and catalogue loads share the handle, one at a time
            running["query"] = client_runner(query_client, guard)

            def load(entries: list[dict[str, Any]], source: str, handle: Client = query_client) -> int:
                with guard:
                    return load_entries(handle, entries, source)

            running["content"] = load
        running["loop"] = loop
        if on_started is not None:
            on_started(loop)
        return loop.run(stop_event)
    finally:
        if http is not None:
            http.stop()
        if query_client is not None:
            query_client.close()
        if own_client and client is not None:
            client.close()
