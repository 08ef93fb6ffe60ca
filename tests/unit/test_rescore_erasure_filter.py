"""``leadpulse rescore FILE`` leaves out the records of leads erased with ``leadpulse forget`` (DESIGN §10),
as a replay of the input topics does; with no broker to ask, it says it could not check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agents.rescore import drop_erased
from agents.rescore_history import CompactHistory
from leadpulse.commands import rescore_cmds
from tests.unit.builders import HOUR, T0, identified, visit
from tests.unit.test_rescore import NOW, cli_files, rescore_app

pytestmark = pytest.mark.unit


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    return rescore_app(monkeypatch)


def test_drop_erased_drops_every_record_of_an_erased_identity() -> None:
    """The sink's predicate: the lead id or a linked anonymous id (a visit before the lead was known)."""
    events = [
        identified(lead="L1", t=T0, event_id="p1"),
        visit(lead=None, anon="A1", t=T0, category="pricing", event_id="w1"),
        visit(lead="L2", t=T0, category="blog", event_id="w2"),
        identified(lead="L3", t=T0 + HOUR, anon="A3", event_id="p3"),
    ]
    history = CompactHistory(events)
    erased = drop_erased(history, {"L1", "A1", "A3"}.__contains__)
    assert erased == 3
    assert [event["event_id"] for _, event in history] == ["w2"]
    untouched = CompactHistory(events)
    assert (drop_erased(untouched, set[str]().__contains__), list(untouched)) == (0, events)


def test_a_history_file_without_a_broker_says_erasures_were_not_checked(
    tmp_path: Path, cli: typer.Typer
) -> None:
    """No broker, no failure: the report, and one note naming the address that did not answer."""
    history, new_rules = cli_files(tmp_path)
    port = rescore_cmds.cli_settings().broker_port
    args = ["rescore", "--rules", str(new_rules), "--dry-run", "--now", str(NOW), "--format", "json"]
    result = CliRunner().invoke(cli, [*args, str(history)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stage_changes"] == 1
    [note] = result.stderr.splitlines()
    assert note.startswith(f"leadpulse rescore: erasures not checked: no broker at 127.0.0.1:{port}")
    # an empty file (checking a rules file against /dev/null) has nothing to filter: no note
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = CliRunner().invoke(cli, [*args, str(empty)])
    assert result.exit_code == 0 and result.stderr == ""
