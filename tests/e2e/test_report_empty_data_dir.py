"""``leadpulse report`` / ``sql`` against a data directory that holds no pipeline data.

The README's demo runs from the repository (``bash run.sh demo`` changes into it), so a user who then runs
``leadpulse report funnel`` from another directory, or in a new shell without the LEADPULSE_DATA_DIR the
demo ran with, reads another, empty ``.leadpulse``. The error said "No leadpulse tables here yet" without
saying where "here" was; it now names the ClickHouse directory it read and the setting that chooses it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "args", [["report", "funnel"], ["sql", "SELECT count() FROM leadpulse.events"]], ids=["report", "sql"]
)
def test_an_empty_data_dir_is_named_in_the_error(args: list[str], tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    env = leadpulse_env(data_dir=data, sink_port=free_port())  # no sink serves this directory
    done = subprocess.run([*LEADPULSE, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("leadpulse: error: UNKNOWN_DATABASE"), lines
    assert f"chdb://{(data / 'clickhouse').resolve()}" in lines[0], lines
    assert "LEADPULSE_DATA_DIR" in lines[0], lines
