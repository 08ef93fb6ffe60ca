"""What the sink does with each record it fetched: skip it (a tombstone, replayed from ClickHouse, a
re-send of a record stored lately, an erased lead's), dead-letter it (too large, inadmissible, undecodable)
or add its row to its table's batch.

Why events take a fast path: event records whose writer schema is current are not re-encoded in Python. The
Avro body of a Single Object Encoded message is a plain Avro record; the event type and the origin (topic,
partition, offset) are appended to it and ClickHouse decodes the batch itself (``sinks.avro_ocf``). The body
is read here by the compiled decoder (``schemas.fast_decode``; ~1.5 us a web visit more than reading only
its first four fields, docs/clickhouse.md) to drop erased identities and re-sent events, refuse what the
worker refuses (no or bad ids, events from the future) and refuse a body with bytes after its record, which
ClickHouse would read as the origin columns. Older writer versions are resolved in Python and re-encoded as
current.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from aiokafka import ConsumerRecord, TopicPartition

from schemas.encode_primitives import zigzag
from schemas.errors import SchemaError
from schemas.fast_codec import codec_for
from schemas.registry import HEADER_LEN, SOE_MAGIC, SchemaRegistry
from sinks.avro_ocf import ContainerFormat, container_format, origin_prefix
from sinks.batch import ClickHouseBatchSink
from sinks.recent_ids import RecentIds
from sinks.replay import is_replayed
from sinks.resume_point import ResumePoint
from sinks.rows import EVENT_TYPES, EVENTS, TABLE_FOR_SCHEMA, Origin, Row, TableSpec, to_row
from sinks.url_privacy import raw_might_hold_email, scrub_event
from streams.erasures import ErasureLog, record_erased
from streams.event_hygiene import InadmissibleEvent, check_admissible
from streams.settings import Settings
from streams.topics import INPUTS, MAX_INPUT_RECORD_BYTES, OUTPUTS

#: The offset a record's id is remembered at (``RecentIds``) when it is known to be stored already: below
#: any partition's unwritten offsets, so a later copy counts as a re-send.
STORED = -1
#: Every topic the sink stores: the inputs and the outputs (not the DLQ).
SINK_TOPICS = INPUTS + OUTPUTS
#: ``sink_loop.ClickHouseSinkLoop._dead_letter``: topic, partition, offset, key, value, stage, error type,
#: reason.
DeadLetter = Callable[[str, int, int, bytes | None, bytes | None, str, str, str], None]


class RecordIntake:
    """Takes a partition's fetched records into ``sink``'s batches. What it drops is reported through
    ``duplicate`` and ``erased``, what it refuses through ``dead_letter`` (the loop counts both)."""

    def __init__(
        self,
        settings: Settings,
        registry: SchemaRegistry,
        email_key: bytes,
        sink: ClickHouseBatchSink,
        recent: RecentIds,
        *,
        fast_path: bool,
        dead_letter: DeadLetter,
        duplicate: Callable[[TableSpec], None],
        erased: Callable[[str], None],
    ) -> None:
        self.registry = registry
        self.codec = codec_for(registry)
        self.email_key = email_key
        self.sink = sink
        self.recent = recent
        self._dead_letter = dead_letter
        self._duplicate = duplicate
        self._erased = erased
        self._input_topics = {settings.topic(t.name) for t in INPUTS}
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

    def take(
        self,
        tp: TopicPartition,
        messages: list[ConsumerRecord[bytes, bytes]],
        *,
        resume: ResumePoint | None,
        unwritten: int,
        erasures: ErasureLog | None,
        next_offsets: dict[tuple[str, int], int],
    ) -> None:
        """Records ``resume`` says are stored already are skipped (None: nothing is); from ``unwritten`` on,
        nothing of the partition is stored yet. ``next_offsets`` is the loop's: the last record's offset + 1
        once all are taken. ``erasures``: the erasure log when it is active, else None.

        Per record this runs ~200k times a second at the sink's speed, so the loop hoists what is the same for
        a whole fetch (the topic's kind, the partition's memory of ids, where skipping ends) and collects the
        fast path's rows to hand them to their batch once (``ClickHouseBatchSink.add_many``). The gaps among
        stored offsets are looked up only at or below ``skip_through``, where a record is rare (re-read
        after a restart or a rebalance)."""
        if not messages:
            return
        key_tp = (tp.topic, tp.partition)
        expected, fingerprint, fmt = self._topic_info[tp.topic]
        is_input = tp.topic in self._input_topics
        prefix = origin_prefix(expected, tp.topic, tp.partition) if fmt is not None else b""
        current_header = SOE_MAGIC + struct.pack("<Q", fingerprint)
        skip_through = -1 if resume is None else resume.skip_through
        in_gap = None if resume is None or not resume.gaps else resume.in_gap
        rows: list[Row] = []  # the fast path's, in offset order
        sources: list[tuple[bytes | None, bytes | None]] = []
        for msg in messages:
            offset = msg.offset
            if offset <= skip_through and (in_gap is None or not in_gap(offset)):
                if in_gap is not None:  # the gaps are taken again: a re-send there meets its stored copy
                    self._remember_stored(key_tp, expected, msg)
                continue  # stored already
            value = msg.value
            if value is None:  # a tombstone on a compacted output (e.g. an erased lead's score)
                continue
            if msg.headers and is_replayed(msg.headers):  # read from ClickHouse by `leadpulse replay`
                self._duplicate(TABLE_FOR_SCHEMA[expected])
                continue
            if is_input and len(value) > MAX_INPUT_RECORD_BYTES:
                limit = MAX_INPUT_RECORD_BYTES
                reason = f"record of {len(value)} bytes exceeds the {limit}-byte input event limit"
                self._dead_letter(
                    tp.topic, tp.partition, offset, msg.key, value, "validate", "ValueError", reason
                )
                continue
            try:
                # Compiled for the current writer schema (schemas/fast_decode.py). It reads to the body's
                # end, so a record with bytes after it (a writer schema other than its fingerprint names) is
                # refused here, not shipped to ClickHouse, which reads such bytes as the origin columns
                # appended below (and stored one record so, with event_type "spring"). Anything it cannot
                # vouch for (an older writer version, bytes fastavro must judge) goes to the full decode.
                record = self.codec.decode_current(value, expected)
                schema = expected
                if record is None:
                    schema, record = self.codec.decode(value, expect=expected)
                if is_input:
                    try:
                        check_admissible(record, msg.timestamp or int(time.time() * 1000))
                    except InadmissibleEvent as exc:
                        self._inadmissible(tp, msg, exc)
                        continue
                if erasures is not None and record_erased(schema, record, erasures.is_erased):
                    self._erased(TABLE_FOR_SCHEMA[schema].table)
                    continue
                if fmt is not None:
                    if self._stored_lately(key_tp, record["event_id"], offset, unwritten):
                        self._duplicate(EVENTS)
                        continue
                    # Fast path: ClickHouse decodes the body itself. An older writer version's record was
                    # resolved by the decode: it is shipped re-encoded as current; so is one with an email
                    # in a URL, as a token (sinks.url_privacy; the dead letter keeps what was sent).
                    if raw_might_hold_email(value) and (
                        scrubbed := scrub_event(schema, record, self.email_key)
                    ):
                        value = self.registry.encode(schema, scrubbed)
                    elif not value.startswith(current_header):
                        value = self.registry.encode(schema, record)
                    rows.append(
                        (value[HEADER_LEN:] + prefix + zigzag(offset), tp.topic, tp.partition, offset)
                    )
                    sources.append((msg.key, msg.value))
                    continue
                table, row = to_row(schema, record, Origin(tp.topic, tp.partition, offset), self.email_key)
            except (SchemaError, KeyError, TypeError, ValueError) as exc:
                self._dead_letter(
                    tp.topic, tp.partition, offset, msg.key, msg.value, "decode", type(exc).__name__, str(exc)
                )
                continue
            if table.keyed_by_id and self._stored_lately(key_tp, str(row[0]), offset, unwritten):
                self._duplicate(table)
                continue
            self.sink.add(table, row, msg.key, msg.value)
        self.sink.add_many(EVENTS, key_tp, rows, sources, fmt)
        next_offsets[key_tp] = messages[-1].offset + 1

    def _remember_stored(self, tp: tuple[str, int], expected: str, msg: ConsumerRecord[bytes, bytes]) -> None:
        """A record skipped on resume as stored, in a partition with gaps: its id is remembered as stored, so
        that a re-send of it in a gap (not stored then, as a re-send) is not stored now. Only records re-read
        after a restart or a rebalance come here; one that does not decode is left alone."""
        value = msg.value
        if value is None:
            return
        try:
            record = self.codec.decode_current(value, expected)
            schema = expected
            if record is None:
                schema, record = self.codec.decode(value, expect=expected)
            if schema in EVENT_TYPES:
                record_id = str(record["event_id"])
            else:
                table, row = to_row(schema, record, Origin(tp[0], tp[1], msg.offset), self.email_key)
                if not table.keyed_by_id:
                    return
                record_id = str(row[0])
        except (SchemaError, KeyError, TypeError, ValueError):
            return
        first = self.recent.first_or_take(tp, record_id, STORED)
        if first is not None and first != STORED:
            # Remembered at a copy taken again from a gap before it (a refused first copy, re-read): should
            # ClickHouse refuse that one again, the id stays remembered as stored, here.
            self.recent.also_taken(tp, record_id, STORED)

    def _stored_lately(self, tp: tuple[str, int], record_id: str, offset: int, unwritten: int) -> bool:
        """Whether a copy of the record was stored lately from its partition: then this one is a re-send
        and is not stored (the daily views would count it twice; counted, its offset committed like any
        other). Otherwise the record is remembered as taken here; a copy whose first one still waits
        unwritten (it may yet be refused) is stored too, and remembered beside it
        (``RecentIds.also_taken``)."""
        first = self.recent.first_or_take(tp, record_id, offset)
        if first is None:
            return False
        if first < unwritten:
            return True
        self.recent.also_taken(tp, record_id, offset)
        return False

    def _inadmissible(
        self, tp: TopicPartition, msg: ConsumerRecord[bytes, bytes], exc: InadmissibleEvent
    ) -> None:
        """An event the worker also refuses (no identity, from the future): not history, a dead letter."""
        self._dead_letter(
            tp.topic, tp.partition, msg.offset, msg.key, msg.value, "validate", type(exc).__name__, str(exc)
        )
