"""DESIGN §2/§5/§6 on the wire, as a client that shares no code with leadpulse sees them.

Inputs are written by a plain kafka-python producer with an encoder built here from the ``.avsc`` files
and ``fastavro`` (``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint + the body); the worker
runs as ``leadpulse worker``; outputs are read raw and decoded the same independent way. Every other worker
test reads through ``streams.reader``/``SchemaRegistry``, so a header or key the registry accepted but an
outside reader would not was never caught.
"""

from __future__ import annotations

import io
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from kafka import KafkaConsumer, KafkaProducer

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.processes import CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
MAGIC = b"\xc3\x01"  # DESIGN §6: Avro Single Object Encoding
HOUR = 3_600_000
# DESIGN §5: topic -> value schema, for the topics this test writes or reads.
INPUTS = {
    "leads.profiles": "lead_identified",
    "events.downloads": "download",
    "events.web_visits": "web_visit",
}
OUTPUTS = {
    "leads.scores": "lead_score",
    "leads.stage_transitions": "stage_transition",
    "leads.hot": "hot_lead",
    "dlq": "dead_letter",
}


class Outside:
    """An SOE codec from the ``.avsc`` files alone: what a consumer in another code base would write."""

    def __init__(self) -> None:
        self.parsed: dict[str, Any] = {}
        self.header: dict[str, bytes] = {}
        for name in {*INPUTS.values(), *OUTPUTS.values()}:
            raw = json.loads((SCHEMAS / f"{name}.avsc").read_text())
            self.parsed[name] = fastavro.parse_schema(raw)
            # fastavro's hex is the fingerprint's 8 bytes in little-endian order, as DESIGN §6 puts them.
            crc = fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO")
            self.header[name] = MAGIC + bytes.fromhex(crc)

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.parsed[name], record)
        return self.header[name] + buf.getvalue()

    def decode(self, name: str, data: bytes) -> dict[str, Any]:
        assert data[:10] == self.header[name], (name, data[:10].hex(), self.header[name].hex())
        body = io.BytesIO(data[10:])
        record: dict[str, Any] = fastavro.schemaless_reader(body, self.parsed[name], self.parsed[name])
        assert body.tell() == len(data) - 10, f"{name}: bytes left after the record"
        return record


def read_raw(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=1500
    )
    try:
        return [(m.key, m.value) for m in consumer]
    finally:
        consumer.close()


def test_an_outside_client_writes_inputs_and_reads_the_outputs_by_the_design_alone(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    codec, prefix, now = Outside(), broker_settings.topic_prefix, int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    base = {"source": "outside", "received_at": None}
    profile = {
        **base,
        "event_id": "W-profile",
        "event_time": now - 2 * HOUR,
        "lead_id": "W1",
        "anonymous_id": "anon-W1",
        "email": None,
        "company_domain": "wire.example",
        "company_name": None,
        "company_size": None,
        "industry": None,
        "job_title": None,
        "seniority": None,
        "country": None,
        "flags": [],
        "owner": None,
        "segment": None,
    }
    demo = {
        **base,
        "event_id": "W-demo",
        "event_time": now - HOUR,
        "lead_id": "W1",
        "anonymous_id": None,
        "content_id": "demo-form",
        "asset_type": "demo_request",
    }
    sent = [
        ("leads.profiles", b"W1", codec.encode("lead_identified", profile)),
        ("events.downloads", b"W1", codec.encode("download", demo)),
        # DESIGN §6: an unknown fingerprint is a dead letter, not a crash.
        ("events.web_visits", b"anon-X", MAGIC + bytes(8) + b"\x00"),
    ]
    for topic, key, value in sent:
        producer.send(prefix + topic, key=key, value=value).get(timeout=30)
    producer.close()

    port = free_port()
    env = leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=prefix,
        data_dir=broker_settings.data_dir,
        web_port=port,
    )
    worker = CliProcess(["worker"], env, tmp_path / "worker.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "worker ready", worker)
        wait_until(
            lambda: len(read_raw(broker.bootstrap, prefix + "leads.hot")) >= 1, 60, "a hot lead", worker
        )
        wait_until(lambda: len(read_raw(broker.bootstrap, prefix + "dlq")) >= 1, 60, "a dead letter", worker)
    finally:
        assert worker.stop() == 0, worker.output()[-3000:]

    out: dict[str, list[tuple[bytes | None, dict[str, Any]]]] = defaultdict(list)
    for topic, schema in OUTPUTS.items():
        for key, value in read_raw(broker.bootstrap, prefix + topic):
            out[topic].append((key, codec.decode(schema, value)))

    for topic in ("leads.scores", "leads.stage_transitions", "leads.hot"):  # DESIGN §5: keyed by lead_id
        assert out[topic] and all(key == b"W1" for key, _ in out[topic]), topic
    moves = [(r["from_stage"], r["to_stage"]) for _, r in out["leads.stage_transitions"]]
    assert moves == [("awareness", "lead"), ("lead", "mql")]  # DESIGN §2: a demo request is MQL at once
    assert out["leads.stage_transitions"][1][1]["trigger_event_id"] == "W-demo"
    assert [r["lead_id"] for _, r in out["leads.hot"]] == ["W1"]
    assert any(s["event_id"] == "W-demo" for _, r in out["leads.scores"] for s in r["reasons"])

    letters = [(key, r) for key, r in out["dlq"] if r["source_topic"] == prefix + "events.web_visits"]
    assert letters, out["dlq"]
    key, letter = letters[0]
    assert key == b"anon-X"  # DESIGN §5: a dead letter keeps the original key
    assert letter["partition"] >= 0 and letter["offset"] == 0 and letter["error"]
