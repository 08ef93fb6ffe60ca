"""``leadpulse sql`` goes through a running sink only when that sink owns the same data directory: a sink of
another directory on the configured port must not answer for this one (its numbers would be another
dataset's, and a ``forget`` would erase nothing here)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.processes import LEADPULSE, CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.e2e


def test_sql_reads_its_own_data_directory_not_the_one_a_running_sink_owns(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    common = {
        "kafka_bootstrap": broker.bootstrap,
        "topic_prefix": broker_settings.topic_prefix,
        "sink_port": port,
    }
    owned, other = tmp_path / "owned", tmp_path / "other"
    sink = CliProcess(["sink"], leadpulse_env(data_dir=owned, **common), tmp_path / "sink.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 90, "the sink ready", sink)

        def sql(data_dir: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    *LEADPULSE,
                    "sql",
                    "--format",
                    "json",
                    "SELECT count() AS tables FROM system.tables WHERE database = 'leadpulse'",
                ],
                env=leadpulse_env(data_dir=data_dir, **common),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        through_sink = sql(owned)  # the directory is locked by the sink: only its query API can answer
        assert through_sink.returncode == 0, through_sink.stderr
        assert json.loads(through_sink.stdout)["result"][0]["tables"] > 0
        own = sql(other)  # another directory: opened here, and it has no tables yet
        assert own.returncode == 0, own.stderr
        assert json.loads(own.stdout)["result"][0]["tables"] == 0
        locked = subprocess.run(  # a command that needs the directory itself says who owns it
            [*LEADPULSE, "migrate"],
            env=leadpulse_env(data_dir=owned, **common),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert locked.returncode == 1
        assert "is owned by another process, normally a running `leadpulse sink`" in locked.stderr
        assert "Cannot lock file" not in locked.stderr
    finally:
        sink.stop()
