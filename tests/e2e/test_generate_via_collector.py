"""``leadpulse generate --via collector``: the synthetic traffic reaches the topics through the HTTP API."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.reader import Decoded, read_topic
from streams.settings import Settings
from streams.topics import INPUTS
from tests.processes import LEADPULSE, CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.e2e

KEYS = json.dumps({"site": "k-site-0123456789", "crm-main": "k-crm-0123456789"})


def test_generate_via_the_collector_publishes_every_planned_event(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    env = leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=broker_settings.topic_prefix,
        data_dir=tmp_path / "data",
        collector_port=port,
        write_keys=KEYS,
    )
    collector = CliProcess(["collector"], env, tmp_path / "collector.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "collector ready", collector)
        args = ["generate", "--seed", "5", "--leads", "15", "--span-hours", "24"]
        planned = tmp_path / "planned.jsonl"
        subprocess.run([*LEADPULSE, *args, "--out", str(planned)], env=env, check=True, timeout=120)
        sent = subprocess.run(
            [*LEADPULSE, *args, "--via", "collector"], env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        collector.stop()
    assert sent.returncode == 0, sent.stderr
    expected = {json.loads(line)["event_id"] for line in planned.read_text().splitlines() if line.strip()}
    assert len(expected) > 100
    assert f"sent {len(expected)} of {len(expected)} events to the collector" in sent.stderr
    stored: set[str] = set()
    for spec in INPUTS:
        for item in read_topic(broker_settings, broker_settings.topic(spec.name), idle_ms=300):
            assert isinstance(item, Decoded), item
            stored.add(item.record["event_id"])
    assert stored == expected


def test_generate_via_the_collector_without_write_keys_says_which_setting_is_missing(tmp_path: Path) -> None:
    env = leadpulse_env(data_dir=tmp_path / "data", kafka_bootstrap="127.0.0.1:1")
    result = subprocess.run(
        [*LEADPULSE, "generate", "--leads", "2", "--via", "collector"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "LEADPULSE_WRITE_KEYS" in result.stderr
