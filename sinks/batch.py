"""Batches of rows per table and the ClickHouse writer: ``add`` rows, ``write`` a whole batch (Quix shape).

Why a batch per *table* holding per-topic-partition segments, rather than one batch per topic-partition:
the four event topics x 8 partitions all land in ``leadpulse.events``; 32 small inserts per flush instead of
one would multiply parts (ClickHouse "too many parts") and cost throughput (measured: 1k-row inserts run
at a fifth of the speed of 50k-row inserts, see docs/clickhouse.md). The segments keep the per-partition
offset ranges, which is what the dedup token and the offset commit need.

``write`` is idempotent by construction: the ``insert_deduplication_token`` is derived from the table and
the exact topic/partition/offset ranges of the rows, so re-sending the identical batch after a failure
(or after a crash, when the same ranges are re-read) is dropped by ClickHouse, materialized views included.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client

from sinks.avro_ocf import ContainerFormat, container_file
from sinks.errors import SinkBackpressure, classify, describe
from sinks.rows import Row, TableSpec
from streams.backoff import backoff_seconds

TopicPartition = tuple[str, int]

#: Back-off before re-sending a batch ClickHouse did not take (docs/clickhouse.md: 0.2 s ... 30 s).
INSERT_RETRY_FIRST_S, INSERT_RETRY_MAX_S = 0.2, 30.0

INSERT_SETTINGS = {
    "async_insert": 0,  # newer servers default to 1, which would ignore our dedup token semantics
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


def ranges_of(rows: Iterable[Row]) -> dict[TopicPartition, tuple[int, int]]:
    """Per topic-partition (first, last) offset of rows ending in topic, partition, offset columns."""
    ranges: dict[TopicPartition, tuple[int, int]] = {}
    for row in rows:
        tp, offset = (row[-3], row[-2]), row[-1]
        low, high = ranges.get(tp, (offset, offset))
        ranges[tp] = (min(low, offset), max(high, offset))
    return ranges


def dedup_token(table: str, ranges: dict[TopicPartition, tuple[int, int]]) -> str:
    """Deterministic token of offset ranges: same ranges, same token, so ClickHouse drops the repeat."""
    spelled = ",".join(f"{t}:{p}:{lo}-{hi}" for (t, p), (lo, hi) in sorted(ranges.items()))
    return f"{table}:{hashlib.sha256(spelled.encode()).hexdigest()[:40]}"


@dataclass
class Segment:
    """Rows of one topic-partition in offset order, with the original key/value for dead-lettering."""

    rows: list[Row] = field(default_factory=list)
    sources: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)

    @property
    def first_offset(self) -> int:
        return int(self.rows[0][-1])


@dataclass
class SinkBatch:
    """Rows bound for one table in one shape: tuples (``container`` None) or, on the Avro fast path,
    ``(extended Avro body, topic, partition, offset)`` of one record schema."""

    table: TableSpec
    opened_at: float
    container: ContainerFormat | None = None
    segments: dict[TopicPartition, Segment] = field(default_factory=dict)
    size: int = 0
    attempts: int = 0

    def add(self, row: Row, key: bytes | None, value: bytes | None) -> None:
        segment = self._segment((row[-3], row[-2]))
        segment.rows.append(row)
        segment.sources.append((key, value))
        self.size += 1

    def extend(
        self, tp: TopicPartition, rows: list[Row], sources: list[tuple[bytes | None, bytes | None]]
    ) -> None:
        """``add`` for rows of one topic-partition in offset order (the sink takes a fetch at a time)."""
        segment = self._segment(tp)
        segment.rows.extend(rows)
        segment.sources.extend(sources)
        self.size += len(rows)

    def _segment(self, tp: TopicPartition) -> Segment:
        segment = self.segments.get(tp)
        if segment is None:
            segment = self.segments[tp] = Segment()
        return segment

    def ordered(self) -> tuple[list[Row], list[tuple[bytes | None, bytes | None]]]:
        """All rows sorted by topic-partition then offset: any prefix of this order covers, for each
        partition, a prefix of its offsets, so an insert cut short leaves few gaps for a restart to take
        again (``sinks.resume_point``)."""
        rows: list[Row] = []
        sources: list[tuple[bytes | None, bytes | None]] = []
        for tp in sorted(self.segments):
            rows.extend(self.segments[tp].rows)
            sources.extend(self.segments[tp].sources)
        return rows, sources

    @property
    def key(self) -> str:
        return batch_key(self.table, self.container)

    @property
    def token(self) -> str:
        ranges = {tp: (s.first_offset, int(s.rows[-1][-1])) for tp, s in self.segments.items()}
        return dedup_token(self.key, ranges)

    def first_offsets(self) -> dict[TopicPartition, int]:
        return {tp: s.first_offset for tp, s in self.segments.items()}


@dataclass(frozen=True)
class Rejected:
    """A row ClickHouse (or the client's serialiser) refused as invalid, with where it came from."""

    table: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error_type: str
    reason: str


@dataclass(frozen=True)
class BatchPolicy:
    """Flush a table's batch at ``max_rows`` rows or ``max_seconds`` after its first row, whichever first."""

    max_rows: int = 50_000
    max_seconds: float = 1.0

    def due(self, batch: SinkBatch, now: float) -> bool:
        return batch.size >= self.max_rows or now - batch.opened_at >= self.max_seconds


def batch_key(table: TableSpec, container: ContainerFormat | None) -> str:
    return table.table if container is None else f"{table.table}:{container.schema_name}"


InsertHook = Callable[[str, int, float, str | None], None]  # (table, rows, seconds, failure kind or None)


class ClickHouseBatchSink:
    """Collects rows per table (``add``) and inserts a whole batch (``write``).

    A batch is open (``batches``, rows are added to it) until the caller ``close``s it to write it; rows
    added after that go to a fresh batch of the table, so a batch can be inserted while the next one fills.
    A closed batch keeps its offsets in ``open_offsets`` until the caller ``discard``s it, once stored.

    ``write`` returns the rows rejected as invalid (to be dead-lettered) or raises ``SinkBackpressure``
    when ClickHouse cannot take the batch now; it never sleeps, the caller decides how to wait.
    """

    def __init__(
        self,
        client: Client,
        policy: BatchPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_insert: InsertHook | None = None,
    ) -> None:
        self.client = client
        self.policy = policy or BatchPolicy()
        self.clock = clock
        self.on_insert = on_insert
        self.batches: dict[str, SinkBatch] = {}
        self.closed: list[SinkBatch] = []  # closed, not stored yet, oldest first: written in this order

    def add(
        self,
        table: TableSpec,
        row: Row,
        key: bytes | None = None,
        value: bytes | None = None,
        container: ContainerFormat | None = None,
    ) -> None:
        self._open_batch(table, container).add(row, key, value)

    def add_many(
        self,
        table: TableSpec,
        tp: TopicPartition,
        rows: list[Row],
        sources: list[tuple[bytes | None, bytes | None]],
        container: ContainerFormat | None = None,
    ) -> None:
        """``add`` for a run of rows of one topic-partition, in offset order, after any it added before."""
        if rows:
            self._open_batch(table, container).extend(tp, rows, sources)

    def _open_batch(self, table: TableSpec, container: ContainerFormat | None) -> SinkBatch:
        """The table's open batch in that shape, a fresh one if none is open (or it was closed)."""
        name = batch_key(table, container)
        batch = self.batches.get(name)
        if batch is None:
            batch = self.batches[name] = SinkBatch(table, self.clock(), container)
        return batch

    def due(self, *, force: bool = False) -> list[SinkBatch]:
        """Open batches due to be written (all of them if ``force``)."""
        now = self.clock()
        return [b for b in self.batches.values() if force or self.policy.due(b, now)]

    def close(self, batch: SinkBatch) -> None:
        """Stop adding to the batch (its table's next rows open a fresh one) and queue it to be written."""
        self.batches.pop(batch.key, None)
        self.closed.append(batch)

    def open_offsets(self) -> dict[TopicPartition, int]:
        """First offset not stored yet (in an open or closed batch), per topic-partition: commits must stay
        below it."""
        offsets: dict[TopicPartition, int] = {}
        for batch in [*self.closed, *self.batches.values()]:
            for tp, first in batch.first_offsets().items():
                offsets[tp] = min(first, offsets.get(tp, first))
        return offsets

    def discard(self, batch: SinkBatch) -> None:
        if batch in self.closed:
            self.closed.remove(batch)
        elif self.batches.get(batch.key) is batch:
            del self.batches[batch.key]

    def clear(self) -> int:
        """Drop every batch, open or closed (their records are re-read); returns how many there were."""
        dropped = len(self.batches) + len(self.closed)
        self.batches.clear()
        self.closed.clear()
        return dropped

    def write(self, batch: SinkBatch) -> list[Rejected]:
        """Insert the batch; invalid rows are isolated by bisection. Safe in a worker thread while rows are
        added to other batches; the caller ``discard``s the batch once it handled the result."""
        batch.attempts += 1
        rows, sources = batch.ordered()
        rejected = self._insert_isolating(batch, rows, sources, batch.token)  # may raise backpressure
        batch.attempts = 0
        return rejected

    def _insert(self, batch: SinkBatch, rows: Sequence[Row], token: str) -> None:
        table = batch.table
        settings = {**INSERT_SETTINGS, "insert_deduplication_token": token}
        started = time.perf_counter()
        try:
            if batch.container is None:
                self.client.insert(
                    table.qualified, rows, column_names=list(table.insert_columns), settings=settings
                )
            else:
                data = container_file(batch.container, [row[0] for row in rows])
                self.client.raw_insert(
                    table.qualified,
                    list(batch.container.columns),
                    insert_block=data,
                    fmt="Avro",
                    settings=settings,
                )
        except Exception as exc:
            if self.on_insert:
                self.on_insert(table.table, len(rows), time.perf_counter() - started, classify(exc))
            raise
        if self.on_insert:
            self.on_insert(table.table, len(rows), time.perf_counter() - started, None)

    def _insert_isolating(
        self, batch: SinkBatch, rows: list[Row], sources: list[tuple[bytes | None, bytes | None]], token: str
    ) -> list[Rejected]:
        table = batch.table.table
        try:
            self._insert(batch, rows, token)
            return []
        except Exception as exc:
            if classify(exc) == "retryable":
                raise SinkBackpressure(
                    table, backoff_seconds(batch.attempts, INSERT_RETRY_FIRST_S, INSERT_RETRY_MAX_S), exc
                ) from exc
            if len(rows) == 1:
                row, (key, value) = rows[0], sources[0]
                reason = f"rejected by leadpulse.{table}: {describe(exc)}"
                return [Rejected(table, row[-3], row[-2], row[-1], key, value, type(exc).__name__, reason)]
        # Permanent failure of a multi-row insert: split in halves (left first, so each partition's stored
        # offsets stay a prefix) until the bad rows stand alone. Sub-tokens derive from sub-ranges, so a
        # retry of the same split is deduplicated too.
        mid = len(rows) // 2
        left, right = rows[:mid], rows[mid:]
        rejected = self._insert_isolating(batch, left, sources[:mid], dedup_token(batch.key, ranges_of(left)))
        rejected += self._insert_isolating(
            batch, right, sources[mid:], dedup_token(batch.key, ranges_of(right))
        )
        return rejected
