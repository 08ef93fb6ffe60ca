"""A command an error line tells the user to type does what the line says, typed as shown.

``rescore ... inputs`` with no broker said "give a history file such as `leadpulse generate` writes":
typed as shown, ``generate`` writes no file (it publishes to the broker, and with none its topics go
with the command).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadpulse.cli import app
from streams.broker import free_port

pytestmark = pytest.mark.unit

RULES = str(Path(__file__).parents[2] / "agents" / "rules.default.yaml")


def test_the_history_file_rescore_suggests_is_written_by_the_command_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"LEADPULSE_BROKER_PORT": str(free_port()), "LEADPULSE_DATA_DIR": str(tmp_path / "data")}
    refused = CliRunner().invoke(app, ["rescore", "--rules", RULES, "--dry-run", "inputs"], env=env)
    assert refused.exit_code == 2, refused.output
    suggested = re.search(r"`(leadpulse generate[^`]*)` writes", refused.output)
    assert suggested, refused.output
    words = shlex.split(suggested.group(1))[1:]
    written = CliRunner().invoke(app, words, env=env)
    assert written.exit_code == 0, written.output
    files = [w for w in words if w.endswith(".jsonl")]
    assert files and (tmp_path / files[0]).stat().st_size > 0, words
    replayed = CliRunner().invoke(app, ["rescore", "--rules", RULES, "--dry-run", files[0]], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert "No lead would change stage or band" in replayed.output
