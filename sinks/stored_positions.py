"""Where the sink resumes on (re)assignment: which records ClickHouse already stores per partition, kept
only while the partition's log is the one those rows were read from.

Why: a crash between insert and commit leaves rows stored above the committed offset; records at stored
offsets up to the highest one are skipped, not inserted a second time, even if the re-read batch is cut
differently. Only offsets actually stored are skipped: the gaps among them above the committed offset
(a poison record whose dead letter was unacknowledged when the sink died, rows refused in a bisection whose
batch a rebalance dropped) are listed here and taken again (``sinks.resume_point``). A new log under old
rows (the topic recreated, or the embedded broker restarted and counting from 0 again) must not be skipped,
or that many new records are dropped without a word: the two "same log" checks here turn skipping off for
such a partition (docs/clickhouse.md, "A new log under old rows").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client

from schemas.errors import SchemaError
from schemas.registry import SchemaRegistry
from sinks.resume_point import MAX_GAPS, ResumePoint, resume_point
from sinks.rows import TABLE_FOR_SCHEMA, Origin, TableSpec, to_row
from streams.broker import aiokafka_client_config
from streams.kafka_close import start_client, stop_consumer
from streams.settings import Settings
from streams.topics import spec_for

log = logging.getLogger(__name__)

#: How long a restarting sink waits to read the record at each highest stored offset (``same_log_only``).
SAME_LOG_READ_S = 5.0

TABLE_FOR_SCHEMA_BY_TABLE: dict[str, TableSpec] = {spec.table: spec for spec in TABLE_FOR_SCHEMA.values()}


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


def stored_gaps(
    client: Client, table: TableSpec, lowest: dict[tuple[str, int], int], limit: int
) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """Per (topic, partition) of ``table``, the ranges (first, last) of offsets from ``lowest`` (the
    partition's committed offset) up to its highest stored one that no row holds, in offset order, at most
    ``limit`` per partition. Several rows at one offset (a re-sent insert before a merge) are one offset, not
    a gap. One scan of the origin columns, like ``stored_positions``: ``lagInFrame`` over the distinct
    offsets (checked on chDB 26.9) gives each offset the one stored before it."""
    if not lowest:
        return {}
    keys = list(lowest)
    result = client.query(
        "SELECT topic, partition, prev + 1 AS first, toInt64(offset) - 1 AS last FROM ("
        " SELECT topic, partition, offset, lagInFrame(toInt64(offset), 1, lo - 1) OVER ("
        "  PARTITION BY topic, partition ORDER BY offset"
        "  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS prev"
        " FROM (SELECT DISTINCT topic, partition, offset,"
        "  {lows:Array(Int64)}[indexOf({keys:Array(Tuple(String, UInt32))}, (topic, partition))] AS lo"
        f"  FROM {table.qualified}"
        "  WHERE (topic, partition) IN {keys:Array(Tuple(String, UInt32))} AND toInt64(offset) >= lo)"
        ") WHERE toInt64(offset) > prev + 1"
        f" ORDER BY topic, partition, first LIMIT {int(limit)} BY topic, partition",
        parameters={"keys": keys, "lows": [lowest[key] for key in keys]},
    )
    found: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for topic, partition, first, last in result.result_rows:
        found.setdefault((str(topic), int(partition)), []).append((int(first), int(last)))
    return found


class StoredPositions:
    """Reads what ClickHouse already stores for newly assigned partitions, and the record now at each
    highest stored offset in the log, with a group-less consumer of its own."""

    def __init__(
        self, settings: Settings, client: Client, registry: SchemaRegistry, email_key: bytes
    ) -> None:
        self.settings = settings
        self.client = client
        self.registry = registry
        self.email_key = email_key

    def _table(self, topic: str) -> TableSpec:
        """The table ``topic``'s records are stored in: one lookup (catalogue schema, then its table) for
        every query here, so they all read the table the sink writes."""
        return TABLE_FOR_SCHEMA[spec_for(topic, self.settings.topic_prefix).schema]

    def stored_for(self, assigned: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Highest stored offset of each newly assigned partition: records up to it are already in
        ClickHouse (a crash between insert and commit) and are skipped, not inserted a second time, but for
        the gaps ``resume_points`` lists."""
        tables = {self._table(t).table for t, _ in assigned}
        specs = [TABLE_FOR_SCHEMA_BY_TABLE[name] for name in sorted(tables)]
        stored = stored_positions(self.client, specs, sorted({t for t, _ in assigned}))
        return {tp: offset for tp, offset in stored.items() if tp in assigned}

    def resume_points(
        self, stored: dict[tuple[str, int], int], committed: dict[tuple[str, int], int]
    ) -> dict[tuple[str, int], ResumePoint]:
        """What to skip of each partition in ``stored`` (its highest stored offset, after the same-log
        check): the offsets stored from its committed offset on (the loop passes the partition's first
        fetched offset when the committed one could not be read; 0 when missing), the gaps among them taken
        again. Below the committed offset everything is stored or dead-lettered already."""
        by_table: dict[str, dict[tuple[str, int], int]] = {}
        for tp, max_stored in stored.items():
            low = committed.get(tp, 0)
            if low < max_stored:
                by_table.setdefault(self._table(tp[0]).table, {})[tp] = low
        gaps: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for name, lowest in sorted(by_table.items()):
            gaps.update(stored_gaps(self.client, TABLE_FOR_SCHEMA_BY_TABLE[name], lowest, MAX_GAPS + 1))
        return {
            tp: resume_point(max_stored, gaps.get(tp, ()), MAX_GAPS, where=f"{tp[0]}[{tp[1]}]")
            for tp, max_stored in stored.items()
        }

    async def same_log_only(self, stored: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """``stored`` without the partitions whose log is not the one the rows were read from.

        The record now at each partition's highest stored offset is read and its id (the table's first
        column: event_id, transition_id, ...) compared with the stored row's. A different id means another
        log (the topic recreated, or the embedded broker restarted and counting from 0 again) that has
        already grown past the old one's end: skipping would drop that many new records without a word.
        When the record cannot be read (compacted away, log shorter: see ``check_same_log``), the positions
        are kept: skipping is what keeps a crash between insert and commit from storing rows twice."""
        if not stored:
            return stored
        now_at = await self.records_at(stored)
        if not now_at:
            return stored
        ids = await asyncio.to_thread(self.stored_ids, {tp: stored[tp] for tp in now_at})
        kept = dict(stored)
        for tp, value in now_at.items():
            stored_id = ids.get(tp)
            log_id = self.first_column(tp, stored[tp], value)
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

    async def records_at(self, positions: dict[tuple[str, int], int]) -> dict[tuple[str, int], bytes]:
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

    def stored_ids(self, positions: dict[tuple[str, int], int]) -> dict[tuple[str, int], str]:
        """The first column (the row's id) of the row stored at each position."""
        by_table: dict[str, list[tuple[str, int, int]]] = {}
        for (topic, partition), offset in positions.items():
            by_table.setdefault(self._table(topic).table, []).append((topic, partition, offset))
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

    def first_column(self, tp: tuple[str, int], offset: int, value: bytes) -> str | None:
        """The id the sink would store for this record, or None when it does not decode."""
        try:
            schema, record = self.registry.decode(value)
            _table, row = to_row(schema, record, Origin(tp[0], tp[1], offset), self.email_key)
        except (SchemaError, KeyError, TypeError, ValueError):
            return None
        return str(row[0])


def check_same_log(tp: TopicPartition, skip_through: int, high: int | None) -> bool:
    """The stored rows name offsets of the log they were read from. A log that ends at or before the
    highest of them is another log: the topic was recreated, or the embedded broker (memory storage)
    restarted and counts from 0 again. Skipping would then drop that many new records without a word
    (seen: a second demo stored 80 of 9,655 events), so the stored positions are ignored for it.
    The fetch high watermark is used, not ListOffsets, which Tansu answers short (DESIGN §11). A new log
    that has already grown past the old one's end is caught by ``StoredPositions.same_log_only``.

    Returns whether skipping up to ``skip_through`` stays on; ``high`` is the partition's fetch high
    watermark (None: not known yet)."""
    if high is None or high > skip_through:
        return True
    log.warning(
        "%s[%d]: ClickHouse holds rows up to offset %d but the log ends at %d: a new log (topic "
        "recreated or broker restarted), so nothing is skipped as already stored",
        tp.topic,
        tp.partition,
        skip_through,
        high,
    )
    return False
