"""``LEADPULSE_WEB_PORT=0``: the worker's ops endpoints get a port from the OS, and the log says which."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.processes import CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.integration

LISTENING = re.compile(r"ops endpoints on http://127\.0\.0\.1:(\d+) ")


def test_the_worker_logs_the_ops_port_the_os_bound(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    """It logged the configured port: 0, which tells an operator (or a test harness) nothing."""
    env = leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=broker_settings.topic_prefix,
        data_dir=broker_settings.data_dir,
        web_port=0,
    )
    proc = CliProcess(["worker"], env, tmp_path / "worker.log")
    try:
        wait_until(lambda: LISTENING.search(proc.output()) is not None, 60, "ops endpoints logged", proc)
        found = LISTENING.search(proc.output())
        assert found is not None
        port = int(found.group(1))
        assert port != 0, proc.output()
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 30, "the logged port answers", proc)
    finally:
        proc.stop()
