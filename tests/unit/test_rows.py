"""Decoded records become ClickHouse rows in the declared column order; emails only as a keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from sinks.batch import dedup_token, ranges_of
from sinks.errors import classify
from sinks.rows import EVENT_FIELDS, TABLE_FOR_SCHEMA, TABLES, Origin, email_hash, to_row
from streams.samples import sample_events
from streams.topics import INPUTS, OUTPUTS

pytestmark = pytest.mark.unit

KEY = b"test-key"
ORIGIN = Origin("p.events.web_visits", 3, 42)


def row_dict(schema: str, record: dict[str, Any]) -> dict[str, Any]:
    spec, row = to_row(schema, record, ORIGIN, KEY)
    assert len(row) == len(spec.insert_columns)
    return dict(zip(spec.insert_columns, row, strict=True))


def test_every_sink_topic_schema_has_a_table() -> None:
    for spec in INPUTS + OUTPUTS:
        assert spec.schema in TABLE_FOR_SCHEMA, spec.name


def test_web_visit_row_fills_its_fields_and_leaves_other_event_fields_null() -> None:
    record = next(sample_events("web_visit", 1))
    row = row_dict("web_visit", record)
    assert row["event_type"] == "web_visit"
    assert row["event_id"] == record["event_id"]
    assert row["event_time"] == record["event_time"]  # int ms: DateTime64(3) ticks
    assert row["url"] == record["url"]
    assert row["content_id"] is None and row["dwell_ms"] is None
    assert (row["topic"], row["partition"], row["offset"]) == ("p.events.web_visits", 3, 42)


def test_every_event_type_maps_to_all_event_columns() -> None:
    for schema in ("web_visit", "email_click", "download", "content_view"):
        record = next(sample_events(schema, 1))
        row = row_dict(schema, record)
        assert set(EVENT_FIELDS) <= set(row)
        for field, value in record.items():
            if field in EVENT_FIELDS:
                assert row[field] == value, (schema, field)


def test_profile_email_is_stored_only_as_keyed_hmac() -> None:
    record = next(sample_events("lead_identified", 1))
    record["email"] = "  Alice@Example.COM "
    row = row_dict("lead_identified", record)
    expected = hmac.new(KEY, b"alice@example.com", hashlib.sha256).hexdigest()
    assert row["email_hash"] == expected
    assert "Alice" not in repr(row) and "alice" not in repr(row).lower().replace(expected, "")


def test_email_hash_depends_on_the_key() -> None:
    assert email_hash("a@b.c", b"k1") != email_hash("a@b.c", b"k2")
    assert email_hash(None, KEY) is None and email_hash("", KEY) is None


def test_hot_lead_signals_become_json_and_email_a_hash() -> None:
    record = {
        "lead_id": "L1",
        "notification_id": "n1",
        "score": 120.0,
        "fit": 40.0,
        "behaviour": 80.0,
        "reason": "score_threshold",
        "became_hot_at": 1_700_000_000_000,
        "sla_due_at": None,
        "owner": "rep1",
        "signals": [
            {
                "rule": "pricing",
                "event_type": "web_visit",
                "event_id": "e1",
                "event_time": 1,
                "points": 30.0,
                "current_points": 29.0,
                "detail": None,
            }
        ],
        "email": "bob@corp.example",
        "company_name": "Corp",
        "company_domain": "corp.example",
        "company_size": 100,
        "industry": "software",
        "job_title": "CTO",
        "country": "JP",
        "account_score": None,
    }
    row = row_dict("hot_lead", record)
    assert json.loads(row["signals"])[0]["rule"] == "pricing"
    assert row["email_hash"] == email_hash("bob@corp.example", KEY)
    assert "email" not in row


def test_record_missing_a_required_field_raises_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="transition_id"):
        to_row("stage_transition", {"lead_id": "L1"}, ORIGIN, KEY)


def test_schema_without_table_is_refused() -> None:
    with pytest.raises(KeyError, match="dead_letter"):
        to_row("dead_letter", {}, ORIGIN, KEY)


def test_table_columns_are_unique() -> None:
    for spec in TABLES:
        assert len(set(spec.insert_columns)) == len(spec.insert_columns), spec.table


def test_dedup_token_is_stable_and_depends_on_offset_ranges() -> None:
    rows = [("a", "t", 0, 5), ("b", "t", 0, 6), ("c", "t", 1, 2)]
    ranges = ranges_of(rows)
    assert ranges == {("t", 0): (5, 6), ("t", 1): (2, 2)}
    assert dedup_token("events", ranges) == dedup_token("events", dict(reversed(list(ranges.items()))))
    assert dedup_token("events", ranges) != dedup_token("events", ranges_of(rows[:2]))
    assert dedup_token("events", ranges) != dedup_token("leads", ranges)


def test_serialisation_errors_are_permanent_and_unknown_errors_retryable() -> None:
    assert classify(TypeError("bad value")) == "permanent"
    assert classify(RuntimeError("who knows")) == "retryable"


def test_avro_fast_path_container_is_a_valid_avro_file_with_origin_fields() -> None:
    import io

    import fastavro

    from schemas.encode_primitives import zigzag
    from schemas.registry import HEADER_LEN, default_registry
    from sinks.avro_ocf import container_file, container_format, origin_prefix

    registry = default_registry()
    records = list(sample_events("content_view", 3))
    fmt = container_format("content_view", registry.schema("content_view").raw)
    prefix = origin_prefix("content_view", "p.events.content_views", 5)
    bodies = [
        registry.encode("content_view", r)[HEADER_LEN:] + prefix + zigzag(1000 + i)
        for i, r in enumerate(records)
    ]
    read = list(fastavro.reader(io.BytesIO(container_file(fmt, bodies))))
    assert [r["event_id"] for r in read] == [r["event_id"] for r in records]
    assert [(r["event_type"], r["topic"], r["partition"], r["offset"]) for r in read] == [
        ("content_view", "p.events.content_views", 5, 1000 + i) for i in range(3)
    ]
    assert read[0]["dwell_ms"] == records[0]["dwell_ms"]
    assert fmt.columns[-4:] == ("event_type", "topic", "partition", "offset")


def test_zigzag_matches_avro_long_encoding() -> None:
    from schemas.encode_primitives import zigzag

    assert [zigzag(n) for n in (0, -1, 1, 63, 64, -65)] == [
        b"\x00",
        b"\x01",
        b"\x02",
        b"\x7e",
        b"\x80\x01",
        b"\x81\x01",
    ]


def test_zigzag_equals_fastavro_at_every_byte_length_boundary() -> None:
    """Its one- to four-byte cases are spelled out by hand: each boundary, both signs, against fastavro."""
    from io import BytesIO

    from fastavro import schemaless_writer

    from schemas.encode_primitives import zigzag

    edges = [0, 2**63 - 1, -(2**63)]
    for bits in range(1, 64):
        edges += [2**bits - 1, 2**bits, 2**bits + 1, -(2**bits) - 1, -(2**bits), -(2**bits) + 1]
    for n in edges:
        if -(2**63) <= n < 2**63:
            out = BytesIO()
            schemaless_writer(out, {"type": "long"}, n)
            assert zigzag(n) == out.getvalue(), n


def test_an_avro_body_chdb_cannot_parse_is_permanent_other_wrapped_cpp_errors_retryable() -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    def wrapped(message: str) -> DatabaseError:
        exc = DatabaseError(f"Code: 1001. DB::Exception: {message}")
        exc.code = 1001  # type: ignore[attr-defined]
        return exc

    assert classify(wrapped("type: avro::Exception, e.what() = EOF reached")) == "permanent"
    assert classify(wrapped("type: std::bad_alloc, e.what() = std::bad_alloc")) == "retryable"
