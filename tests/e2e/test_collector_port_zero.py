"""``leadpulse collector`` with port 0 prints the port the OS bound, the one to send events to: it printed
the configured port (``--port 0`` printed LEADPULSE_COLLECTOR_PORT, or 8088; LEADPULSE_COLLECTOR_PORT=0
printed 0)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.processes import CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("how", ["--port 0", "LEADPULSE_COLLECTOR_PORT=0"])
def test_port_zero_prints_the_port_bound(
    how: str, broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    configured = 0 if how.startswith("LEADPULSE") else free_port()
    env = leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=broker_settings.topic_prefix,
        data_dir=tmp_path / "d",
        collector_port=configured,
        write_keys='{"web": "wk_test"}',
    )
    args = ["collector", "--port", "0"] if how.startswith("--") else ["collector"]
    collector = CliProcess(args, env, tmp_path / "collector.log")
    try:
        line = re.compile(r"collector on 127\.0\.0\.1:(\d+) ")
        wait_until(lambda: line.search(collector.output()) is not None, 60, "the address line", collector)
        match = line.search(collector.output())
        assert match is not None
        port = int(match.group(1))
        assert port not in (0, configured), collector.output()
        # /ready, not at once: the collector listens before its producer has connected (it says "not ready"
        # meanwhile, streams/collector.py); a busy CI machine caught it in between
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{port}/ready"),
            30,
            f"ready on the port printed ({port})",
            collector,
        )
    finally:
        assert collector.stop() == 0, collector.output()
