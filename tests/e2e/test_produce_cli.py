"""``leadpulse produce`` as a user runs it: which broker the records went to is never left unsaid."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.samples import sample_events
from streams.settings import Settings
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e

NOTE = "note: no broker is running, so one is started for this command only"


def _produce(env: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    """``leadpulse produce <path> --topic events.web_visits`` as a user runs it, output captured."""
    return subprocess.run(
        [*LEADPULSE, "produce", str(path), "--topic", "events.web_visits"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _produce_one_visit(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "visits.jsonl"
    path.write_text(json.dumps({"type": "web_visit", **next(sample_events("web_visit", 1))}) + "\n")
    return _produce(env, path)


def _running_broker_env(broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The environment of a command that talks to the test session's broker."""
    return leadpulse_env(
        kafka_bootstrap=broker.bootstrap, topic_prefix=broker_settings.topic_prefix, data_dir=tmp_path / "d"
    )


def test_produce_without_a_running_broker_says_its_records_go_with_the_command(tmp_path: Path) -> None:
    env = leadpulse_env(broker_port=free_port(), data_dir=tmp_path / "data")
    done = _produce_one_visit(env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert NOTE in done.stderr
    assert "sent 1, rejected 0" in done.stderr  # status lines go to stderr


def test_produce_to_a_running_broker_adds_no_note(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    env = _running_broker_env(broker, broker_settings, tmp_path)
    done = _produce_one_visit(env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert NOTE not in done.stderr
    assert "sent 1, rejected 0" in done.stderr  # status lines go to stderr


def test_an_unreachable_broker_is_one_line_naming_it_not_a_traceback(tmp_path: Path) -> None:
    """`produce` (and every command that talks to Kafka) with a bootstrap nobody answers on."""
    path = tmp_path / "one.jsonl"
    path.write_text('{"event_id": "e1", "event_time": 1, "lead_id": "L1", "source": "s", "url": "u"}\n')
    port = free_port()
    started = time.monotonic()
    done = _produce(leadpulse_env(kafka_bootstrap=f"127.0.0.1:{port}", data_dir=tmp_path / "d"), path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    took = time.monotonic() - started
    assert f"cannot reach the Kafka broker at 127.0.0.1:{port}" in done.stderr
    assert done.stderr.lower().count("is it running") == 1, done.stderr  # it was said twice
    assert "nothing was sent" in done.stderr
    assert took < 20, f"produce took {took:.0f} s to give up"  # 33 s with kafka-python's 30 s bootstrap


def test_a_rejected_lines_reason_is_printed_as_written_not_read_as_rich_markup(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    """The reasons were printed through rich's markup: a field named "[/x]" in a line raised MarkupError (a
    traceback after the good lines were sent, no summary), and one named "[b]" vanished from its message."""
    env = _running_broker_env(broker, broker_settings, tmp_path)
    good = next(sample_events("web_visit", 1))
    path = tmp_path / "visits.jsonl"
    lines = [good, {**good, "event_id": "e2", "[b]": 1}, {**good, "event_id": "e3", "[/x]": 1}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = _produce(env, path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "line 2: invalid web_visit: [b]: unknown field" in done.stderr
    assert "line 3: invalid web_visit: [/x]: unknown field" in done.stderr
    assert "sent 1, rejected 2" in done.stderr


def test_a_rejected_lines_reason_is_one_line_of_stderr_however_long(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    """Piped, rich wrapped each reason at 80 columns, so `grep 'line 2:'` found a third of the epoch-seconds
    advice (errors are one line each for that reason: cli_output.report_error)."""
    env = _running_broker_env(broker, broker_settings, tmp_path)
    good = next(sample_events("web_visit", 1))
    path = tmp_path / "visits.jsonl"
    path.write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "event_id": "e2", "event_time": 1764403200})
    )
    done = _produce(env, path)
    assert done.returncode == 1, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("line 2:")]
    assert line.endswith("send 1764403200000 for 2025-11-29T08:00:00.000Z"), done.stderr
