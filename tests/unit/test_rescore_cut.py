"""`leadpulse rescore --now T` replays the history as of T: events after T are left out of both replays."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agents.rescore import rescore
from tests.unit.builders import HOUR, MIN, download, rules
from tests.unit.test_rescore import HISTORY, NOW, cli_files, rescore_app

pytestmark = pytest.mark.unit

LOWER = {"stages": {"mql_threshold": 90, "warm_from": 50}}
#: after NOW: a new lead and a request for L2 that would make it an MQL, were they replayed
LATER = [
    download(lead="L4", t=NOW + MIN, asset="inquiry", event_id="late-l4"),
    download(lead="L2", t=NOW + HOUR, asset="inquiry", event_id="late-l2"),
]


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    return rescore_app(monkeypatch)


def test_events_after_now_are_left_out_of_both_replays() -> None:
    """Replayed, L4 was a lead "as of --now" before its first event, and L2 an MQL by a request of later."""
    as_of_now = rescore(HISTORY, rules(), rules(**LOWER), NOW)
    report = rescore([*HISTORY, *LATER], rules(), rules(**LOWER), NOW)
    assert report.events == len(HISTORY) and report.leads == 3
    assert report.changes == as_of_now.changes
    assert report.after_now == 2
    assert report.to_dict() == {**as_of_now.to_dict(), "after_now": 2}


def test_an_event_at_now_is_replayed() -> None:
    at_now = download(lead="L4", t=NOW, asset="inquiry", event_id="at-now")
    report = rescore([*HISTORY, at_now], rules(), rules(), NOW)
    assert report.after_now == 0 and report.leads == 4


def test_cli_says_how_many_events_after_now_were_left_out(tmp_path: Path, cli: typer.Typer) -> None:
    history, new_rules = cli_files(tmp_path)
    with history.open("a") as out:
        out.writelines(json.dumps({"type": schema, **event}) + "\n" for schema, event in LATER)
    args = ["rescore", "--rules", str(new_rules), "--dry-run", "--now", "2024-01-01T02:00:00Z", str(history)]

    table = CliRunner().invoke(cli, args, env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "left out 2 events with an event_time after --now (2024-01-01T02:00:00Z)" in table.stderr
    assert "L4" not in table.stdout and "L2" not in table.stdout

    csv_out = CliRunner().invoke(cli, [*args, "--format", "csv"])
    assert "left out 2 events" in csv_out.stderr and "L4" not in csv_out.stdout

    as_json = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert doc["after_now"] == 2 and doc["events"] == len(HISTORY) and doc["leads"] == 3
    assert "left out 2 events" not in as_json.stderr  # json says it in the field


def test_help_says_now_cuts_the_history(cli: typer.Typer) -> None:
    out = CliRunner().invoke(cli, ["rescore", "--help"], env={"COLUMNS": "250"}).output
    assert "events after it are left out" in out
    assert "does not cut" not in out


def test_without_now_the_note_names_the_time_of_the_run(tmp_path: Path, cli: typer.Typer) -> None:
    """Events ahead of the clock (a tracker's clock; admissible up to 23 h ahead) are cut at the run's time,
    and the note must not speak of a --now nobody gave."""
    history, new_rules = cli_files(tmp_path)
    _schema, ahead = download(lead="L5", t=int(time.time() * 1000) + HOUR, asset="inquiry", event_id="ahead")
    with history.open("a") as out:
        out.write(json.dumps({"type": "download", **ahead}) + "\n")
    result = CliRunner().invoke(cli, ["rescore", "--rules", str(new_rules), "--dry-run", str(history)])
    assert result.exit_code == 0, result.output
    assert "left out 1 events with an event_time after the time of this run (" in result.stderr
    assert "after --now" not in result.stderr
