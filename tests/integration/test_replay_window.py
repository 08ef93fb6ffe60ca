"""``leadpulse replay`` reads back exactly the stored events and sales activities of its window."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from leadpulse.cli import app
from sinks.clickhouse import get_client
from sinks.migrate import migrate
from sinks.query_service import client_runner
from sinks.replay import is_replayed, stored_records
from sinks.rows import Origin, to_row
from streams.reader import Decoded, read_topic
from streams.settings import Settings, load_settings
from tests.unit.builders import activity, visit

pytestmark = pytest.mark.integration

HOUR = 3_600_000
T = 1_790_000_000_000  # 2026-09-21


def _replay_cli(settings: Settings, clickhouse_dsn: str, since: str, until: str) -> Result:
    """``leadpulse replay --since --until`` as a user runs it, against this broker and ClickHouse."""
    env = {
        "LEADPULSE_KAFKA_BOOTSTRAP": settings.bootstrap,
        "LEADPULSE_TOPIC_PREFIX": settings.topic_prefix,
        "LEADPULSE_CLICKHOUSE_DSN": clickhouse_dsn,
    }
    return CliRunner().invoke(app, ["replay", "--since", since, "--until", until], env=env)


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


def test_a_stored_record_todays_checks_refuse_is_reported_and_the_rest_is_replayed(
    clickhouse_dsn: str, broker_settings: Settings
) -> None:
    """History stored before the event_time floor existed (an epoch-seconds time read as 1999) used to stop
    `leadpulse replay` at that row with a traceback, sending nothing after it. Now the row is named on
    stderr, the exit status is 1 and the rows after it are replayed."""
    client = get_client(load_settings(clickhouse_dsn=clickhouse_dsn))
    migrate(client)
    tag = uuid.uuid4().hex[:8]
    floor = 946_684_800_000  # 2000-01-01: earlier input times are refused (epoch seconds, most likely)
    records = [
        visit("L1", floor - HOUR // 2, event_id=f"{tag}-before-2000"),
        visit("L1", floor, event_id=f"{tag}-at-2000"),
    ]
    rows = [to_row(schema, record, Origin("t", 0, n), b"key") for n, (schema, record) in enumerate(records)]
    client.insert(
        rows[0][0].qualified, [row for _, row in rows], column_names=list(rows[0][0].insert_columns)
    )
    client.close()

    result = _replay_cli(broker_settings, clickhouse_dsn, "1999-12-31T23:00:00Z", "2000-01-01T01:00:00Z")

    assert result.exit_code == 1, result.output
    assert "replayed: web_visit 1" in result.stdout
    assert f"not replayed: web_visit {tag}-before-2000: invalid web_visit: event_time:" in result.stderr
    assert "1 stored record(s) not replayed" in result.stderr
    topic = broker_settings.topic("events.web_visits")
    sent = [item for item in read_topic(broker_settings, topic, idle_ms=800) if isinstance(item, Decoded)]
    assert [(item.record["event_id"], is_replayed(item.headers)) for item in sent] == [
        (f"{tag}-at-2000", True)
    ]


def test_replay_leaves_out_stored_records_of_a_lead_whose_erasure_is_pending(
    clickhouse_dsn: str, broker_settings: Settings
) -> None:
    """The erasure is logged but not applied to ClickHouse yet (the sink backing off, or a `forget` whose
    deletion failed): `leadpulse replay` must not put the erased lead's records back on the input topics
    (sales.activities is kept forever), anonymous visits included."""
    import time

    from streams.erasures import erasure_record, publish_erasure

    client = get_client(load_settings(clickhouse_dsn=clickhouse_dsn))
    migrate(client)
    tag = uuid.uuid4().hex[:8]
    gone, anon, kept = f"L-{tag}-gone", f"A-{tag}-gone", f"L-{tag}-kept"
    records = [
        visit(None, T + 10 * HOUR, anon=anon, event_id=f"{tag}-anon"),
        visit(gone, T + 10 * HOUR + 1, event_id=f"{tag}-gone"),
        activity("first_touch", gone, T + 10 * HOUR + 2, event_id=f"{tag}-gone-s"),
        visit(kept, T + 10 * HOUR + 3, event_id=f"{tag}-kept"),
    ]
    for n, (schema, record) in enumerate(records):
        table, row = to_row(schema, record, Origin("t", 0, n), b"key")
        client.insert(table.qualified, [row], column_names=list(table.insert_columns))
    client.close()
    publish_erasure(broker_settings, erasure_record(gone, [anon], int(time.time() * 1000)))

    result = _replay_cli(broker_settings, clickhouse_dsn, "2026-09-22T00:00:00Z", "2026-09-22T01:00:00Z")

    assert result.exit_code == 0, result.output
    sent = [
        item.record["event_id"]
        for name in ("events.web_visits", "sales.activities")
        for item in read_topic(broker_settings, broker_settings.topic(name), idle_ms=800)
        if isinstance(item, Decoded) and item.record["event_id"].startswith(tag)
    ]
    assert sent == [f"{tag}-kept"]
    assert "left out 3 stored record(s) of leads erased" in result.stderr
