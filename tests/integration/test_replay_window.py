"""``leadpulse replay`` reads back exactly the stored events and sales activities of its window."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sinks.clickhouse import get_client
from sinks.migrate import migrate
from sinks.query_service import client_runner
from sinks.replay import stored_records
from sinks.rows import Origin, to_row
from streams.settings import load_settings
from tests.unit.builders import activity, visit

pytestmark = pytest.mark.integration

HOUR = 3_600_000
T = 1_790_000_000_000  # 2026-09-21


def test_replay_reads_back_the_window_and_nothing_outside_it(clickhouse_dsn: str, tmp_path: Path) -> None:
    client = get_client(load_settings(clickhouse_dsn=clickhouse_dsn, data_dir=tmp_path))
    migrate(client)
    run = client_runner(client)
    tag = uuid.uuid4().hex[:8]
    records = [
        visit("L1", T - 2 * HOUR, event_id=f"{tag}-before"),
        visit("L1", T, event_id=f"{tag}-at-since"),  # since is inclusive
        activity("first_touch", "L1", T + HOUR // 2, event_id=f"{tag}-early-activity"),
        visit(None, T + HOUR, anon="A1", event_id=f"{tag}-inside-anonymous"),
        activity("accepted", "L1", T + 2 * HOUR, event_id=f"{tag}-inside-activity"),
        visit("L1", T + 3 * HOUR, event_id=f"{tag}-at-until"),  # until is exclusive
    ]
    by_table: dict[str, tuple[tuple[str, ...], list[tuple[object, ...]]]] = {}
    for offset, (schema, record) in enumerate(records):
        spec, row = to_row(schema, record, Origin("t", 0, offset), b"key")
        by_table.setdefault(spec.qualified, (spec.insert_columns, []))[1].append(row)
    for table, (columns, rows) in by_table.items():
        client.insert(table, rows, column_names=list(columns))

    replayed = [
        (schema, record)
        for schema, record in stored_records(run, T, T + 3 * HOUR)
        if record["event_id"].startswith(tag)
    ]
    client.close()

    # oldest first across both tables: a follow-up is replayed where it happened, not after every event
    assert [record["event_id"] for _, record in replayed] == [
        f"{tag}-at-since",
        f"{tag}-early-activity",
        f"{tag}-inside-anonymous",
        f"{tag}-inside-activity",
    ]
    assert [schema for schema, _ in replayed] == [
        "web_visit",
        "sales_activity",
        "web_visit",
        "sales_activity",
    ]
    sent = {record["event_id"]: record for _, record in records}
    for _, record in replayed:  # event times come back as the epoch milliseconds they were sent with
        assert record["event_time"] == sent[record["event_id"]]["event_time"]
        assert record["lead_id"] == sent[record["event_id"]]["lead_id"]
