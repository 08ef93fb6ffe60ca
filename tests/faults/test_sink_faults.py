"""Fault 2: the ClickHouse sink killed mid-insert, and ClickHouse going away in the middle of a run.

(a) ``kill -9`` of the real ``leadpulse sink`` while it inserts a large backlog (every input topic), then a
restart. Pass: every acknowledged event in ClickHouse, none twice (not even as a raw row before merges: the
dedup tokens and the resume-after-stored-offsets rule), offsets committed to the log end, time to recover
printed.

(b) ClickHouse unavailable, then back. No ClickHouse server exists on this machine (chDB is in-process; the
sink's query API is read-only JSON, not ClickHouse's HTTP protocol; Debian's clickhouse-server is 18.16,
older than insert deduplication tokens), so "the same server goes away and comes back" cannot be staged.
What runs instead, with the real processes: a sink stores part of the stream; ClickHouse becomes
unreachable (the sink restarted against a server DSN where nothing listens) while more events arrive; then
it is back (the sink restarted against the working engine). Pass: while away the sink stays up and says why
(no crash loop, no traceback) and no offset moves past what was stored; once back every acknowledged event
is stored exactly once. Not covered here: an insert failing *inside* a running sink (covered in-process by
tests/integration/test_clickhouse_sink.py::test_offsets_are_not_committed_while_clickhouse_refuses_inserts).
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from streams.broker import free_port
from streams.settings import Settings
from tests.faults.oracle import (
    INPUT_TOPICS,
    Acknowledged,
    RecoveryTimer,
    build_traffic,
    produce,
    stored_rows,
    table_of,
)
from tests.faults.services import Service, Services
from tests.integration.test_clickhouse_sink import committed_offsets, end_offsets
from tests.processes import wait_until

pytestmark = pytest.mark.faults


def _tables(acked: Acknowledged) -> dict[str, set[str]]:
    want: dict[str, set[str]] = defaultdict(set)
    for schema, ids in acked.by_schema.items():
        want[table_of(schema)] |= ids
    return want


def _stored_count(sink: Service, tables: dict[str, set[str]], prefix: str) -> int | None:
    """Rows stored so far (raw), or None while the sink does not answer."""
    try:
        return sum(sum(stored_rows(sink.query(), t, prefix).raw.values()) for t in tables)
    except Exception:  # starting up, or killed: the query API is not there
        return None


def _stored_positions(
    services: Services, tables: dict[str, set[str]], prefix: str
) -> dict[tuple[str, int], int]:
    """Highest stored offset per input partition, read from the engine's files while no sink runs (one
    ``leadpulse sql`` for every table: each run opens the engine, ~2.7 s; a topic is stored in one table)."""
    union = " UNION ALL ".join(
        f"SELECT topic, partition, offset FROM leadpulse.{table} WHERE startsWith(topic, '{prefix}')"
        for table in sorted(tables)
    )
    rows = services.sql(
        f"SELECT topic, partition, max(offset) AS last FROM ({union}) GROUP BY topic, partition"
    )
    return {(row["topic"], int(row["partition"])): int(row["last"]) for row in rows}


def _log_end(settings: Settings) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for name in INPUT_TOPICS.values():
        ends.update(end_offsets(settings, settings.topic(name)))
    return ends


def _wait_committed_to_log_end(settings: Settings, sink: Service, timeout: float, what: str) -> None:
    ends = _log_end(settings)
    wait_until(
        lambda: all(committed_offsets(settings).get(tp, 0) >= end for tp, end in ends.items()),
        timeout,
        what,
        sink.proc,
    )


def _assert_stored_exactly_once(sink: Service, tables: dict[str, set[str]], prefix: str) -> None:
    for table, ids in tables.items():
        stored = stored_rows(sink.query(), table, prefix)
        assert set(stored.final) == ids, f"{table}: {len(ids - set(stored.final))} missing"
        assert stored.duplicates_stored == {}, f"{table}: stored twice {list(stored.duplicates_stored)[:5]}"


def test_sink_killed_mid_insert_of_a_backlog_loses_and_duplicates_nothing(
    broker_settings: Settings, services: Services
) -> None:
    settings = broker_settings
    events = build_traffic(17, 2_500, id_prefix=settings.topic_prefix)
    acked = produce(settings, events)
    assert not acked.failed
    tables = _tables(acked)
    total = len(acked.ids)
    print(f"\nsink kill -9: backlog of {total:,} events on {len(INPUT_TOPICS)} topics")

    sink = services.start("sink", "--batch-rows", "500", "--batch-seconds", "0.2")
    deadline = time.monotonic() + 60
    while sink.metric("leadpulse_sink_rows_total") == 0:  # /metrics answers without the engine's lock
        assert time.monotonic() < deadline and sink.alive(), "no rows stored within 60 s"
        time.sleep(0.02)
    sink.proc.kill9()
    timer = RecoveryTimer("sink kill -9 mid-insert")
    committed = committed_offsets(settings)
    stored = _stored_positions(services, tables, settings.topic_prefix)
    print(
        f"sink kill -9: killed with {sum(p + 1 for p in stored.values()):,} records stored, "
        f"{sum(committed.values()):,} offsets committed"
    )
    assert sum(stored.values()) + len(stored) < total, "the kill must land before the backlog was stored"
    for tp, offset in committed.items():  # commit after durable: never past what is stored
        assert offset <= stored.get(tp, -1) + 1, (tp, offset, stored.get(tp))

    sink = services.start("sink", "--batch-rows", "500", "--batch-seconds", "0.2", log="sink-2.log")
    wait_until(
        lambda: (_stored_count(sink, tables, settings.topic_prefix) or 0) >= total,
        120,
        "every event stored after the restart",
        sink.proc,
    )
    timer.mark(f"all {total:,} events stored")
    _wait_committed_to_log_end(settings, sink, 60, "offsets committed to the log end")
    timer.mark("offsets committed to the log end")
    _assert_stored_exactly_once(sink, tables, settings.topic_prefix)
    assert sink.alive()


def test_clickhouse_away_mid_stream_holds_offsets_and_then_everything_is_stored_once(
    broker_settings: Settings, services: Services
) -> None:
    settings = broker_settings
    events = build_traffic(19, 300, id_prefix=settings.topic_prefix)
    half = len(events) // 2
    first = produce(settings, events[:half])
    sink = services.start("sink", "--batch-seconds", "0.2")
    first_tables = _tables(first)
    _wait_committed_to_log_end(settings, sink, 90, "first half stored and committed")
    _assert_stored_exactly_once(sink, first_tables, settings.topic_prefix)
    assert sink.proc.stop() == 0

    closed = free_port()  # ClickHouse away: nothing listens there
    away = services.start(
        "sink", ready=False, log="sink-away.log", clickhouse_dsn=f"http://127.0.0.1:{closed}"
    )
    timer = RecoveryTimer("ClickHouse away")
    second = produce(settings, events[half:])  # events keep arriving while ClickHouse is away
    assert not first.failed and not second.failed
    held = committed_offsets(settings)
    wait_until(lambda: away.proc.output().count("unavailable") >= 3, 60, "three retries logged", away.proc)
    assert away.alive(), away.proc.output()[-2000:]  # waiting, not crash-looping
    assert committed_offsets(settings) == held, "an offset moved while ClickHouse was away"
    assert sum(held.values()) < sum(_log_end(settings).values())
    assert away.proc.stop() == 0
    log = away.proc.output()
    assert "Traceback" not in log, log[-3000:]
    assert f"ClickHouse at http://127.0.0.1:{closed} unavailable" in log

    back = services.start("sink", "--batch-seconds", "0.2", log="sink-back.log")
    timer.mark("ClickHouse back (sink ready)")
    acked = Acknowledged(
        {**first.positions, **second.positions},
        defaultdict(set, {s: first.by_schema[s] | second.by_schema[s] for s in INPUT_TOPICS}),
    )
    tables = _tables(acked)
    total = len(acked.ids)
    wait_until(
        lambda: (_stored_count(back, tables, settings.topic_prefix) or 0) >= total,
        90,
        "everything stored once ClickHouse is back",
        back.proc,
    )
    timer.mark(f"all {total:,} events stored")
    _assert_stored_exactly_once(back, tables, settings.topic_prefix)
