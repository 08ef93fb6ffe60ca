"""``leadpulse replay`` with no broker running, e.g. after ``leadpulse demo`` has ended.

It started an embedded broker for itself, re-published the stored history into its in-memory topics, stopped
it and printed "replayed: ...": the records went with the command and no worker ever read them. It now says
so first, as ``produce`` and ``generate`` do.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e

NOTE = "note: no broker is running, so one is started for this command only"


def test_replay_without_a_running_broker_says_its_records_go_with_the_command(tmp_path: Path) -> None:
    env = leadpulse_env(broker_port=free_port(), data_dir=tmp_path / "data", sink_port=free_port())
    migrated = subprocess.run([*LEADPULSE, "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    done = subprocess.run([*LEADPULSE, "replay"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert NOTE in done.stderr, done.stderr
    assert "replayed: nothing" in done.stdout
