"""No broker at the configured address: each long-running command stops within seconds with one line
naming it (the worker took 61 s, and three of them left "Unclosed AIOKafka..." errors behind)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("command", ["worker", "sink", "collector", "notifier"])
def test_an_unreachable_broker_is_one_line_within_seconds(command: str, tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = leadpulse_env(
        kafka_bootstrap=bootstrap,
        data_dir=tmp_path / "d",
        web_port=free_port(),
        sink_port=free_port(),
        notifier_port=free_port(),
        collector_port=free_port(),
        write_keys='{"web": "k"}',
        webhook_urls=json.dumps(["http://127.0.0.1:9/hook"]),
        webhook_secret="a-secret-for-the-test",
    )
    started = time.monotonic()
    done = subprocess.run([*LEADPULSE, command], env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert f"cannot reach the Kafka broker at {bootstrap}" in out
    for bad in ("Traceback", "Unclosed"):
        assert bad not in out, out
    assert took < 20, f"{command} took {took:.0f} s to give up"
