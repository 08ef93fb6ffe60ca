"""``leadpulse report`` / ``sql`` against a data directory that holds no pipeline data.

The README's demo runs from the repository (``bash run.sh demo`` changes into it), so a user who then runs
``leadpulse report funnel`` from another directory, or in a new shell without the LEADPULSE_DATA_DIR the
demo ran with, reads another, empty ``.leadpulse``. The error said "No leadpulse tables here yet" without
saying where "here" was; it now names the ClickHouse directory it read and the setting that chooses it.

Both commands only read, yet they left an empty ``elsewhere/clickhouse`` behind (opening chDB creates its
directory): a directory with nothing stored in it is now not opened (an engine in memory answers instead).
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
    _refused(args, data)
    assert not data.exists(), sorted(tmp_path.rglob("*"))  # a read-only command created nothing


@pytest.mark.parametrize(
    "args", [["report", "sla"], ["sql", "SELECT * FROM leadpulse.leads"]], ids=["report", "sql"]
)
def test_what_was_there_before_is_left_as_it_was(args: list[str], tmp_path: Path) -> None:
    """A data directory with only logs, and an empty ``clickhouse/`` (a volume mounted for a sink not
    started yet): nothing is added to it, nothing removed."""
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "logs" / "sink.log").write_text("kept\n")
    (data / "clickhouse").mkdir()
    before = sorted(data.rglob("*"))
    _refused(args, data)
    assert sorted(data.rglob("*")) == before
    assert (data / "logs" / "sink.log").read_text() == "kept\n"


def test_a_query_of_no_table_still_runs_and_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    env = leadpulse_env(data_dir=data, sink_port=free_port())
    done = subprocess.run(
        [*LEADPULSE, "sql", "--format", "csv", "SELECT 1 AS one"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, "one\n1\n"), done.stdout + done.stderr
    assert not data.exists()


def _refused(args: list[str], data: Path) -> None:
    env = leadpulse_env(data_dir=data, sink_port=free_port())  # no sink serves this directory
    done = subprocess.run([*LEADPULSE, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("leadpulse: error: UNKNOWN_DATABASE"), lines
    assert f"chdb://{(data / 'clickhouse').resolve()}" in lines[0], lines
    assert "LEADPULSE_DATA_DIR" in lines[0], lines
