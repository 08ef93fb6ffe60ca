"""The producer SDK against the real local broker (Tansu): round trip, rejection, poison records."""

from __future__ import annotations

import struct
import time
from collections import Counter

import pytest
from kafka import KafkaConsumer

from schemas.errors import SchemaValidationError, UnknownFingerprint
from schemas.registry import default_registry
from streams.producer import Producer, lead_key, produce_file
from streams.reader import Decoded, Undecodable, read_topic
from streams.samples import sample_events
from streams.settings import Settings
from streams.topics import INPUTS

pytestmark = pytest.mark.integration


def test_ten_thousand_events_of_each_input_type_round_trip_identically(broker_settings: Settings) -> None:
    registry = default_registry()
    sent: dict[str, dict[str, dict[str, object]]] = {}
    with Producer(broker_settings) as producer:
        for spec in INPUTS:
            events = [registry.validate(spec.schema, e) for e in sample_events(spec.schema, 10_000)]
            sent[spec.name] = {str(e["event_id"]): e for e in events}
            for event in events:
                producer.send(spec.schema, event)
    for spec in INPUTS:
        got = list(read_topic(broker_settings, broker_settings.topic(spec.name)))
        assert all(isinstance(r, Decoded) for r in got)
        decoded = [r for r in got if isinstance(r, Decoded)]
        assert len(decoded) == 10_000, spec.name
        assert {r.record["event_id"]: r.record for r in decoded} == sent[spec.name]
        assert all(r.schema == spec.schema for r in decoded)
        # keyed by lead identity, so a lead's events share one partition
        for r in decoded:
            assert r.key == str(lead_key(r.record)).encode()
        by_key = {}
        for r in decoded:
            assert by_key.setdefault(r.key, r.partition) == r.partition


def test_invalid_event_is_rejected_with_the_field_named_and_nothing_sent(broker_settings: Settings) -> None:
    with Producer(broker_settings) as producer, pytest.raises(SchemaValidationError, match="url: required"):
        producer.send("web_visit", {"event_id": "x", "event_time": 1, "lead_id": "L1", "source": "t"})
    assert list(read_topic(broker_settings, broker_settings.topic("events.web_visits"), idle_ms=500)) == []


def test_unknown_fingerprint_is_reported_and_reading_goes_on(broker_settings: Settings) -> None:
    registry = default_registry()
    good = registry.validate("download", next(sample_events("download", 1)))
    with Producer(broker_settings) as producer:
        producer.send_encoded(
            broker_settings.topic("events.downloads"), b"L1", b"\xc3\x01" + struct.pack("<Q", 42) + b"\x02x"
        )
        producer.send_encoded(broker_settings.topic("events.downloads"), b"L1", b"not avro")
        producer.send("download", good)
    got = list(read_topic(broker_settings, broker_settings.topic("events.downloads")))
    kinds = Counter(type(r).__name__ for r in got)
    assert kinds == {"Undecodable": 2, "Decoded": 1}
    poison = [r for r in got if isinstance(r, Undecodable)]
    assert any(isinstance(r.error, UnknownFingerprint) for r in poison)
    assert all("events.downloads" in r.reason and "@" in r.reason for r in poison)


def test_a_line_that_is_not_utf8_is_that_lines_error_not_a_traceback(
    broker_settings: Settings, tmp_path
) -> None:
    """The file was decoded as a whole while being read: one Latin-1 byte raised UnicodeDecodeError out of
    `leadpulse produce` (a traceback, no line number) and the lines around it were not sent. A UTF-8 BOM
    (Windows editors) made line 1 "not JSON"."""
    import json

    first = next(sample_events("web_visit", 1))
    lines = [
        b"\xef\xbb\xbf" + json.dumps(first).encode(),
        json.dumps({**first, "event_id": "caf\u00e9"}, ensure_ascii=False).encode("latin-1"),
        json.dumps({**first, "event_id": "e3"}).encode(),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = produce_file(broker_settings, path, "events.web_visits")
    assert report.sent == 2
    assert [n for n, _ in report.rejected] == [2]
    assert report.rejected[0][1].startswith("not UTF-8: byte 0xe9")
    sent = [
        r.record["event_id"] for r in read_topic(broker_settings, broker_settings.topic("events.web_visits"))
    ]
    assert sorted(sent) == sorted([first["event_id"], "e3"])


def test_produce_file_reports_sent_and_rejected_lines(broker_settings: Settings, tmp_path) -> None:
    import json

    path = tmp_path / "events.jsonl"
    good = next(sample_events("web_visit", 1))
    path.write_text(
        "\n".join(
            [
                json.dumps(good),
                '{"event_id":',  # cut short: the error names its own line's end, not the next line
                json.dumps({**good, "event_id": "e2", "url": None}),
                json.dumps({**good, "event_id": "e3"}),
                json.dumps({"type": "web_visit", **good, "event_id": "e4"}),  # the history-file format
                json.dumps({"type": "download", **good, "event_id": "e5"}),
                json.dumps({**good, "event_id": "e6", "event_time": int(time.time() * 1000) + 30 * 3600_000}),
            ]
        )
        + "\n"
    )
    report = produce_file(broker_settings, path, "events.web_visits")
    assert report.sent == 3
    assert [n for n, _ in report.rejected] == [2, 3, 6, 7]
    assert report.rejected[0][1] == "not JSON: Expecting value at column 13"
    assert "url" in report.rejected[1][1]
    assert (
        report.rejected[2][1]
        == "type: 'download' does not go to events.web_visits (its records are 'web_visit')"
    )
    # DESIGN §3: the worker would dead-letter it, so the command refuses it naming the field
    assert report.rejected[3][1].startswith("invalid web_visit: event_time: is 30.0 h in the future")
    sent = [
        r.record["event_id"] for r in read_topic(broker_settings, broker_settings.topic("events.web_visits"))
    ]
    assert sorted(sent) == sorted([good["event_id"], "e3", "e4"])
    consumer_topics = KafkaConsumer(bootstrap_servers=broker_settings.bootstrap).topics()
    assert broker_settings.topic("events.web_visits") in consumer_topics


def test_a_line_nested_too_deeply_is_that_lines_error_and_the_lines_after_it_are_sent(
    broker_settings: Settings, tmp_path
) -> None:
    """json.loads raises RecursionError (not a JSONDecodeError) on '[[[[…' thousands deep: it ended
    `leadpulse produce` with a traceback and the lines after it were never sent."""
    import json

    good = next(sample_events("web_visit", 1))
    path = tmp_path / "deep.jsonl"
    lines = [json.dumps(good), "[" * 100_000 + "]" * 100_000, json.dumps({**good, "event_id": "e3"})]
    path.write_text("\n".join(lines) + "\n")
    report = produce_file(broker_settings, path, "events.web_visits")
    assert (report.sent, report.rejected) == (2, [(2, "not JSON we accept: nested too deeply")])
    sent = [
        r.record["event_id"] for r in read_topic(broker_settings, broker_settings.topic("events.web_visits"))
    ]
    assert sorted(sent) == sorted([good["event_id"], "e3"])


def test_a_line_with_a_number_of_more_than_4300_digits_is_named_not_json_we_accept(
    broker_settings: Settings, tmp_path
) -> None:
    """json.loads raises a plain ValueError for such a number; produce reported Python's own advice
    ("use sys.set_int_max_str_digits() to increase the limit") as the line's problem."""
    import json

    good = next(sample_events("content_view", 1))
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(good) + '\n{"dwell_ms": ' + "9" * 5000 + "}\n")
    report = produce_file(broker_settings, path, "events.content_views")
    assert (report.sent, report.rejected) == (
        1,
        [(2, "not JSON we accept: a number has more than 4300 digits")],
    )


def test_an_event_time_in_epoch_seconds_is_refused_by_the_sdk_and_produce_naming_the_field(
    broker_settings: Settings, tmp_path
) -> None:
    """Epoch seconds were published and scored as an event of January 1970, too old to count: silently."""
    import json
    from datetime import UTC, datetime

    seconds = int(time.time())
    event = {**next(sample_events("web_visit", 1)), "event_id": "s", "event_time": seconds}
    with Producer(broker_settings) as producer:
        with pytest.raises(SchemaValidationError) as caught:
            producer.send("web_visit", event)
        [error] = caught.value.errors
        assert error.field == "event_time"
        assert error.problem.startswith(
            f"{seconds} looks like epoch seconds: as epoch milliseconds it is 1970-"
        )
        assert f"; send {seconds * 1000} for " in error.problem
        # datetimes convert as before; one before 2000 is refused as such, not taken for seconds
        producer.send("web_visit", {**event, "event_id": "dt", "event_time": datetime.now(UTC)})
        old = {**event, "event_id": "old", "event_time": datetime(1999, 12, 31, 23, 0)}
        with pytest.raises(
            SchemaValidationError, match=r"^invalid web_visit: event_time: 1999-12-31T23:00:00"
        ):
            producer.send("web_visit", old)
    path = tmp_path / "events.jsonl"
    path.write_text(
        json.dumps(event) + "\n" + json.dumps({**event, "event_id": "ms", "event_time": seconds * 1000})
    )
    report = produce_file(broker_settings, path, "events.web_visits")  # `leadpulse produce`
    assert report.sent == 1
    [(line, problem)] = report.rejected
    assert line == 1
    assert problem.startswith(f"invalid web_visit: event_time: {seconds} looks like epoch seconds")
    topic = broker_settings.topic("events.web_visits")
    assert sorted(r.record["event_id"] for r in read_topic(broker_settings, topic, idle_ms=500)) == [
        "dt",
        "ms",
    ]


def test_a_received_at_outside_event_times_bounds_is_refused_by_the_sdk_and_produce_naming_it(
    broker_settings: Settings, tmp_path
) -> None:
    """received_at (the collector's time of receipt; null from the SDK, kept by a replay) was published
    whatever it was: far ahead, negative, epoch seconds. It now meets event_time's bounds."""
    import json
    from datetime import UTC, datetime

    now = int(time.time() * 1000)
    event = {**next(sample_events("web_visit", 1)), "event_id": "r", "event_time": now - 60_000}
    seconds = now // 1000
    refused = {
        "ahead": (now + 30 * 3600_000, "is 30.0 h in the future; the limit is 23 h"),
        "negative": (-5, "-5 is 1969-12-31T23:59:59.995Z as epoch milliseconds, before 2000-01-01"),
        "seconds": (seconds, f"{seconds} looks like epoch seconds: as epoch milliseconds it is 1970-"),
        "old": (datetime(1999, 12, 31, 23, 0), "1999-12-31T23:00:00.000Z is before 2000-01-01"),
    }
    with Producer(broker_settings) as producer:
        for name, (received_at, problem) in refused.items():
            with pytest.raises(SchemaValidationError) as caught:
                producer.send("web_visit", {**event, "event_id": name, "received_at": received_at})
            [error] = caught.value.errors
            assert (error.field, error.problem[: len(problem)]) == ("received_at", problem), name
        both = {**event, "event_id": "both", "event_time": now + 30 * 3600_000, "received_at": -5}
        with pytest.raises(SchemaValidationError) as caught:
            producer.send("web_visit", both)
        assert [e.field for e in caught.value.errors] == ["event_time", "received_at"]
        # null (the SDK's own), a stored receipt (a replay), a datetime, an hour ahead (clock skew) still go
        producer.send("web_visit", {**event, "event_id": "null", "received_at": None})
        producer.send("web_visit", {**event, "event_id": "stored", "received_at": now - 1000})
        producer.send("web_visit", {**event, "event_id": "datetime", "received_at": datetime.now(UTC)})
        producer.send("web_visit", {**event, "event_id": "skew", "received_at": now + 3600_000})
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({**event, "event_id": "line", "received_at": seconds}) + "\n")
    report = produce_file(broker_settings, path, "events.web_visits")  # `leadpulse produce`
    assert report.sent == 0
    [(line, problem)] = report.rejected
    assert line == 1
    assert problem.startswith(f"invalid web_visit: received_at: {seconds} looks like epoch seconds")
    topic = broker_settings.topic("events.web_visits")
    sent = sorted(r.record["event_id"] for r in read_topic(broker_settings, topic, idle_ms=500))
    assert sent == ["datetime", "null", "skew", "stored"]


def test_an_event_over_the_input_record_limit_is_refused_by_the_sdk(broker_settings: Settings) -> None:
    """The worker and the sink dead-letter an input record over 64 KiB; the collector refuses it per event.
    The SDK published it (found by an audit), leaving the caller to believe it was scored."""
    now = int(time.time() * 1000)
    event = {"event_id": "big", "event_time": now, "lead_id": "L1", "source": "t", "url": "u" * 70_000}
    with (
        Producer(broker_settings) as producer,
        pytest.raises(
            SchemaValidationError, match=r"<event>: encodes to 700\d\d bytes; the input event limit is 65536"
        ),
    ):
        producer.send("web_visit", event)
    assert list(read_topic(broker_settings, broker_settings.topic("events.web_visits"), idle_ms=500)) == []


def test_no_broker_at_start_is_one_clear_error(broker_settings: Settings) -> None:
    from kafka.errors import KafkaTimeoutError

    from streams.broker import free_port
    from streams.producer import BrokerUnavailable

    with pytest.raises(BrokerUnavailable, match=r"no Kafka broker answered at 127\.0\.0\.1:\d+"):
        Producer(broker_settings, bootstrap=f"127.0.0.1:{free_port()}", bootstrap_timeout_ms=1000)
    assert issubclass(BrokerUnavailable, KafkaTimeoutError)  # what callers caught before still works


def test_close_after_the_broker_went_away_raises_the_delivery_error_naming_the_events(tmp_path) -> None:
    """kafka-python's own close() then timed out too, and its KafkaTimeoutError replaced the DeliveryError
    that names the events to re-send."""
    from streams.broker import create_topics, start_private_broker
    from streams.producer import DeliveryError
    from streams.settings import load_settings

    broker = start_private_broker(tmp_path / "tansu.log")
    try:
        create_topics(broker.bootstrap)
        settings = load_settings(kafka_bootstrap=broker.bootstrap, data_dir=tmp_path)
        producer = Producer(settings, max_block_ms=2000, request_timeout_ms=1000, linger_ms=500)
        producer.send(
            "web_visit",
            {
                "event_id": "e-1",
                "event_time": int(time.time() * 1000),
                "lead_id": "L1",
                "source": "t",
                "url": "u",
            },
        )
        broker.stop()
        with pytest.raises(DeliveryError) as info:
            producer.close(timeout=2)
        assert info.value.event_ids == ["e-1"]
        # and the client is really closed: no sender thread left running, nothing for __del__ to retry
        client = producer._producer
        client._sender.join(5)  # force-closed: it stops at its next loop
        assert client._closed and not client._sender.is_alive()
    finally:
        broker.stop()


def test_the_documented_sdk_example_publishes_through_the_public_facade(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/ingestion.md's example, run as written: the SDK's errors and settings were importable only from
    ``streams``/``schemas``, and no doc showed a call (ingestion audit)."""
    import re
    from pathlib import Path

    import leadpulse.producer as sdk

    text = (Path(__file__).parents[2] / "docs" / "ingestion.md").read_text()
    example = re.search(r"```python\n(from leadpulse\.producer import .*?)```", text, re.S)
    assert example is not None, "the SDK example is gone from docs/ingestion.md"
    monkeypatch.setenv("LEADPULSE_KAFKA_BOOTSTRAP", broker_settings.bootstrap)
    monkeypatch.setenv("LEADPULSE_TOPIC_PREFIX", broker_settings.topic_prefix)
    exec(compile(example.group(1), "docs/ingestion.md", "exec"), {})
    [item] = list(read_topic(broker_settings, broker_settings.topic("sales.activities"), idle_ms=500))
    assert isinstance(item, Decoded) and item.record["event_id"] == "crm-7731"
    assert item.record["activity"] == "accepted" and item.key == b"L-1042"
    needed = ("BrokerUnavailable", "DeliveryError", "SchemaValidationError", "FieldError", "load_settings")
    for name in needed:
        assert name in sdk.__all__ and hasattr(sdk, name), name
