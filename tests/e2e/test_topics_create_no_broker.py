"""``leadpulse topics create`` with no broker running: it says the topics go with the command.

It started an embedded broker for itself, created the catalogue's topics in its memory, stopped it and
printed "created N topic(s)" with nothing said, as ``produce`` did before it got the same note.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streams.broker import free_port
from streams.topics import TOPICS
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e

NOTE = "note: no broker is running, so one is started for this command only"


def test_topics_create_without_a_running_broker_says_its_topics_go_with_the_command(tmp_path: Path) -> None:
    env = leadpulse_env(broker_port=free_port(), data_dir=tmp_path / "d")
    done = subprocess.run(
        [*LEADPULSE, "topics", "create"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert NOTE in done.stderr, done.stderr
    assert f"created {len(TOPICS)} topic(s)" in done.stdout + done.stderr  # every catalogue topic
