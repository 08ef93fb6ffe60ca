"""No broker at the configured address: each long-running command stops within seconds with one line
naming it (the worker took 61 s, and three of them left "Unclosed AIOKafka..." errors behind). The
collector first retries for LEADPULSE_COLLECTOR_BROKER_WAIT_S (60 s by default; 0 = one attempt), serving
/health meanwhile (tests/e2e/test_collector_broker_wait.py): here the wait is cut to 2 s and to 0."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("command", "broker_wait_s"),
    [("worker", None), ("sink", None), ("collector", 2), ("collector", 0), ("notifier", None)],
)
def test_an_unreachable_broker_is_one_line_within_seconds(
    command: str, broker_wait_s: int | None, tmp_path: Path
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = leadpulse_env(
        collector_broker_wait_s=broker_wait_s,
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
    if broker_wait_s:
        assert f"no broker answered within {broker_wait_s} s (LEADPULSE_COLLECTOR_BROKER_WAIT_S)" in out, out
        assert took >= broker_wait_s, f"gave up after {took:.1f} s, before the {broker_wait_s} s wait"
    for bad in ("Traceback", "Unclosed"):
        assert bad not in out, out
    assert took < 20, f"{command} took {took:.0f} s to give up"
