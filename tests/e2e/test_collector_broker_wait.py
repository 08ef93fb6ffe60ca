"""``leadpulse collector`` started before its broker waits for it (LEADPULSE_COLLECTOR_BROKER_WAIT_S)
instead of exiting at once: it serves /health, says not ready on /ready and answers events 503 meanwhile,
then takes events once the broker is up. Exiting made an orchestrator that starts the collector first
restart it in a loop. The end of the bounded wait (exit 1, one line) is in tests/e2e/test_no_broker.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streams.broker import EmbeddedBroker, create_topics, free_port, tansu_binary
from streams.reader import read_topic
from streams.settings import load_settings
from tests.processes import CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.e2e

KEY = "wk-wait-test"


def _call(url: str, body: object = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {KEY}"})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_collector_waits_for_a_broker_that_starts_after_it(tmp_path: Path) -> None:
    broker_port, port = free_port(), free_port()
    prefix = "wait."
    env = leadpulse_env(
        kafka_bootstrap=f"127.0.0.1:{broker_port}",  # nothing listens there yet
        topic_prefix=prefix,
        data_dir=tmp_path / "d",
        collector_port=port,
        collector_broker_wait_s=120,
        write_keys=json.dumps({"web": KEY}),
    )
    base = f"http://127.0.0.1:{port}"
    event = {"type": "web_visit", "event_id": "w-1", "anonymous_id": "A1", "url": "https://x.example/"}
    collector = CliProcess(["collector"], env, tmp_path / "collector.log")
    broker: EmbeddedBroker | None = None
    try:
        wait_until(lambda: http_ok(f"{base}/health"), 30, "/health while the broker is down", collector)
        status, ready = _call(f"{base}/ready")
        assert (status, ready["ready"]) == (503, False), ready
        assert ready["waiting_for"] == f"Kafka broker at 127.0.0.1:{broker_port}"
        status, answer = _call(f"{base}/v1/events", event)
        assert (status, answer["error"]) == (503, "broker_unavailable"), answer
        assert "has not reached the broker" in answer["message"]

        broker = EmbeddedBroker(
            tansu_binary(load_settings()), "127.0.0.1", broker_port, tmp_path / "tansu.log"
        )
        broker.start()
        create_topics(broker.bootstrap, prefix)
        wait_until(lambda: http_ok(f"{base}/ready"), 60, "/ready once the broker is up", collector)
        status, answer = _call(f"{base}/v1/events", event)
        assert (status, answer["accepted"]) == (202, 1), answer
        settings = load_settings(kafka_bootstrap=broker.bootstrap, topic_prefix=prefix)
        stored = list(read_topic(settings, settings.topic("events.web_visits"), idle_ms=500))
        assert [r.record["event_id"] for r in stored] == ["w-1"]
    finally:
        assert collector.stop() == 0, collector.output()
        if broker is not None:
            broker.stop()
    out = collector.output()
    assert "cannot reach the Kafka broker at" in out and "LEADPULSE_COLLECTOR_BROKER_WAIT_S" in out, out
    for bad in ("Traceback", "Unclosed"):
        assert bad not in out, out


def test_a_collector_stopped_while_it_waits_for_the_broker_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = leadpulse_env(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",  # nothing listens there
        data_dir=tmp_path / "d",
        collector_port=port,
        collector_broker_wait_s=120,
        write_keys=json.dumps({"web": KEY}),
    )
    collector = CliProcess(["collector"], env, tmp_path / "collector.log")
    wait_until(lambda: "yet (" in collector.output(), 30, "a failed attempt", collector)
    assert collector.stop() == 0, collector.output()
    out = collector.output()
    assert "collector stopped" in out
    for bad in ("Traceback", "Unclosed", "leadpulse: error"):
        assert bad not in out, out
