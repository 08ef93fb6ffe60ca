"""``leadpulse dlq`` with no broker running, as after a demo has ended (its embedded broker went with it).

Each dlq command started an empty embedded broker of its own and answered from it: ``dlq list`` printed an
empty table and "0 dead letter(s)", ``dlq replay --dry-run`` "would replay 0 record(s)", as if the pipeline
had written none. Dead letters live on the broker's in-memory ``dlq`` topic, so the command now says that no
broker runs and what to start, and exits 1 (the thing it talks to is missing).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "args", [["dlq", "list"], ["dlq", "list", "--json"], ["dlq", "show", "0"], ["dlq", "replay", "--dry-run"]]
)
def test_dlq_without_a_running_broker_says_so_instead_of_listing_nothing(
    args: list[str], tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    env = leadpulse_env(broker_port=port, data_dir=tmp_path / "d")
    done = subprocess.run([*LEADPULSE, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"leadpulse: error: no broker is running at 127.0.0.1:{port}"), lines
    assert "start `leadpulse broker`" in lines[0]
    assert "dead letter(s)" not in done.stderr and "would replay" not in done.stderr
