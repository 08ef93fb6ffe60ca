"""A data directory the embedded ClickHouse cannot use is one line and exit 1, not "unavailable; retrying"
forever (found by an ops audit with LEADPULSE_DATA_DIR=/etc/passwd)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("chosen_by", ["LEADPULSE_DATA_DIR", "LEADPULSE_CLICKHOUSE_DSN"])
def test_a_data_dir_that_is_a_file_stops_the_sink_with_one_line(
    chosen_by: str, broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    """The error names the setting that chose the directory: with LEADPULSE_CLICKHOUSE_DSN set it said "set
    LEADPULSE_DATA_DIR", which the DSN overrides."""
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("x")
    where = (
        {"data_dir": a_file}
        if chosen_by == "LEADPULSE_DATA_DIR"
        else {
            "data_dir": tmp_path / "data",
            "clickhouse_dsn": f"chdb://{a_file}/clickhouse",
        }
    )
    env = leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=broker_settings.topic_prefix,
        sink_port=free_port(),
        **where,
    )
    done = subprocess.run([*LEADPULSE, "sink"], env=env, capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert f"chdb://{a_file}/clickhouse cannot be used: Not a directory (set {chosen_by})" in out
    assert "retrying" not in out and "Traceback" not in out, out
