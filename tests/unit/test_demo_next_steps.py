"""The demo's closing line tells the user how to reach its data with the commands they can actually type.

It said "data kept in DIR: try `leadpulse report content`". After ``bash run.sh demo`` (the README's first
command) ``leadpulse`` is ``.venv/bin/leadpulse``, usually not on the PATH ("command not found"), and with a
LEADPULSE_DATA_DIR of their own, or from another directory, ``leadpulse report`` read an empty data directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from leadpulse.live_view import next_steps

pytestmark = pytest.mark.unit


def _exe(tmp_path: Path) -> Path:
    exe = tmp_path / "repo" / ".venv" / "bin" / "leadpulse"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    return exe


def test_run_sh_demo_names_the_venv_script_when_leadpulse_is_not_on_the_path(tmp_path: Path) -> None:
    _exe(tmp_path)
    repo = tmp_path / "repo"
    line = next_steps(repo / ".leadpulse", repo, ".venv/bin/leadpulse", None)
    assert f"data kept in {(repo / '.leadpulse').resolve()}. Next, from {repo}:" in line
    assert "\n  .venv/bin/leadpulse report funnel " in line
    assert "LEADPULSE_DATA_DIR" not in line  # the default directory, read from the same place


def test_an_own_data_dir_is_part_of_the_command(tmp_path: Path) -> None:
    exe = _exe(tmp_path)
    data = tmp_path / "mine"
    line = next_steps(data, tmp_path, str(exe), str(exe))  # activated venv: `leadpulse` is this script
    command = f"LEADPULSE_DATA_DIR={data.resolve()} leadpulse"
    assert f"\n  {command} report funnel " in line
    assert line.endswith(f'\n  {command} sql "SELECT count() FROM leadpulse.events"')


def test_python_dash_m_falls_back_to_the_command_name(tmp_path: Path) -> None:
    line = next_steps(tmp_path / ".leadpulse", tmp_path, "/x/leadpulse/cli.py", None)
    assert "\n  leadpulse report funnel " in line


def test_a_clickhouse_dsn_is_where_the_data_is_said_to_be(tmp_path: Path) -> None:
    """With LEADPULSE_CLICKHOUSE_DSN the demo's data is in that ClickHouse: the closing lines said "data kept
    in DATA_DIR" and put LEADPULSE_DATA_DIR in front of the commands, which the DSN overrides; from a shell
    without the DSN they read an empty embedded ClickHouse."""
    dsn = "http://analyst:***@clickhouse.internal:8123"
    line = next_steps(tmp_path / "mine", tmp_path, "leadpulse", None, dsn)
    assert line.startswith(f"data stored in {dsn}. Next, from {tmp_path} ")
    assert "with the same LEADPULSE_CLICKHOUSE_DSN:\n" in line
    assert "data kept in" not in line and "LEADPULSE_DATA_DIR" not in line
    assert "\n  leadpulse report funnel " in line
