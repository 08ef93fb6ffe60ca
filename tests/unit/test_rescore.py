"""Safe re-scoring: replay history with old and new rules, report stage/band changes, emit nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agents.rescore import HistoryError, read_history, replay, rescore
from agents.rules import DEFAULT_RULES_PATH
from agents.scoring import behaviour_at
from leadpulse.commands import rescore_cmds
from streams.broker import free_port
from tests.unit.builders import DAY, HOUR, MIN, T0, activity, download, identified, rules, view, visit

pytestmark = pytest.mark.unit

HISTORY = [
    identified(lead="L1", t=T0, company_size=6000, seniority="c_level", country="JP", event_id="p1"),
    view(lead="L1", t=T0 + MIN, content_type="webinar", event_id="v1"),
    view(lead="L1", t=T0 + 2 * MIN, content_type="webinar", event_id="v2"),
    download(lead="L1", t=T0 + 3 * MIN, asset="whitepaper", event_id="d1"),
    identified(lead="L2", t=T0, event_id="p2"),
    visit(lead="L2", t=T0 + MIN, category="blog", event_id="w2"),
    visit(lead=None, anon="A3", t=T0, category="pricing", event_id="w3"),
    identified(lead="L3", t=T0 + HOUR, anon="A3", event_id="p3"),
]
NOW = T0 + 2 * HOUR


def test_same_rules_report_no_change() -> None:
    report = rescore(HISTORY, rules(), rules(), NOW)
    assert report.changes == []
    assert report.events == len(HISTORY) and report.leads == 3


def test_lower_threshold_reports_who_would_become_mql() -> None:
    new = rules(stages={"mql_threshold": 90, "warm_from": 50})
    report = rescore(HISTORY, rules(), new, NOW)
    [change] = report.changes
    assert change.lead_id == "L1"
    assert (change.old_stage, change.new_stage) == ("lead", "mql")
    assert (change.old_band, change.new_band) == ("warm", "hot")
    assert change.delta == pytest.approx(0.0, abs=1e-9)
    assert report.stage_changes == 1


def test_changed_points_report_the_score_delta() -> None:
    new = rules(scoring={**rules().scoring.model_dump(), "content_type": {"webinar": 40}})
    report = rescore(HISTORY, rules(), new, NOW)
    change = next(c for c in report.changes if c.lead_id == "L1")
    assert change.new_stage == "mql"
    assert change.delta == pytest.approx(2 * 40 * 0.5 ** ((2 * MIN - MIN) / (30 * DAY)) - 30, abs=0.01)


def test_replay_follows_identity_forwards() -> None:
    states = replay(HISTORY, rules(), NOW)
    assert states["A3"].merged_into == "L3"
    # the anonymous pricing visit (10 points, half-life 14 days, at T0) was scored on the lead, whose clock
    # is its own profile an hour later
    lead = states["L3"]
    assert set(lead.acc) == {"page_category.pricing"}
    assert behaviour_at(lead, rules(), lead.max_time) == pytest.approx(10 * 0.5 ** (HOUR / (14 * DAY)))


def test_replay_runs_timers_at_now() -> None:
    history = [download(lead="L1", t=T0, asset="inquiry", event_id="d")]
    assert replay(history, rules(), T0 + HOUR)["L1"].stage == "mql"
    assert replay(history, rules(), T0 + 15 * DAY)["L1"].stage == "nurturing"


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_history_reads_type_lines_and_wrapped_records(tmp_path: Path) -> None:
    schema, record = visit(lead="L1", t=T0, category="pricing", event_id="w1")
    path = write_jsonl(
        tmp_path / "h.jsonl",
        [
            {"type": schema, **{**record, "event_time": "2024-01-01T00:00:00Z"}},
            {"schema": "sales_activity", "record": activity("accepted", t=T0 + 1, event_id="s1")[1]},
        ],
    )
    events = list(read_history(path))
    assert events[0] == ("web_visit", record)
    assert events[1][0] == "sales_activity" and events[1][1]["activity"] == "accepted"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "not JSON"),
        ('{"type": "page_view", "event_id": "x"}', "type: expected one of"),
        (
            '{"type": "web_visit", "event_id": "x", "event_time": 1, "source": "s", "lead_id": "L"}',
            "url: required field is missing",
        ),
        (  # what the worker dead-letters is not history
            '{"type": "download", "event_id": "x", "event_time": 1, "source": "s", "content_id": "c", '
            '"asset_type": "whitepaper"}',
            "lead_id: one of lead_id or anonymous_id is required",
        ),
        (
            '{"type": "download", "event_id": "x", "event_time": "2999-01-01T00:00:00Z", "source": "s", '
            '"lead_id": "L", "content_id": "c", "asset_type": "whitepaper"}',
            "event_time: is .* h in the future",
        ),
        (  # epoch seconds: scored as 1970 before, too old to count
            '{"type": "download", "event_id": "x", "event_time": 1764403200, "source": "s", '
            '"lead_id": "L", "content_id": "c", "asset_type": "whitepaper"}',
            "event_time: 1764403200 looks like epoch seconds",
        ),
    ],
)
def test_history_errors_name_the_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"type": "lead_identified", "event_id": "p", "event_time": 1704067200000, "lead_id": "L", '
        '"source": "s", "flags": []}\n\n' + line + "\n"
    )
    with pytest.raises(HistoryError, match=rf"bad\.jsonl:3: .*{problem}"):
        list(read_history(path))


def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI tests read a history file, for which rescore checks the erasure log when a broker answers:
    point the settings at a port nobody listens on, whatever runs on this machine's 9092."""
    monkeypatch.delenv("LEADPULSE_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("LEADPULSE_BROKER_PORT", str(free_port()))


def rescore_app(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """The rescore command in an app of its own, with no broker to ask for erasures (``no_broker``)."""
    no_broker(monkeypatch)
    app = typer.Typer()
    rescore_cmds.register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer from collapsing the app into one
    return app


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    return rescore_app(monkeypatch)


def cli_files(tmp_path: Path) -> tuple[Path, Path]:
    history = write_jsonl(tmp_path / "history.jsonl", [{"type": s, **e} for s, e in HISTORY])
    new_rules = tmp_path / "new.yaml"
    shipped = DEFAULT_RULES_PATH.read_text()
    new_rules.write_text(shipped.replace("mql_threshold: 100", "mql_threshold: 90"))
    return history, new_rules


def test_cli_dry_run_prints_a_table(tmp_path: Path, cli: typer.Typer) -> None:
    history, new_rules = cli_files(tmp_path)
    result = CliRunner().invoke(
        cli,
        ["rescore", "--rules", str(new_rules), "--dry-run", "--now", str(NOW), str(history)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "L1" in result.output and "lead -> mql" in result.output and "warm -> hot" in result.output


def test_cli_json_format(tmp_path: Path, cli: typer.Typer) -> None:
    history, new_rules = cli_files(tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            "rescore",
            "--rules",
            str(new_rules),
            "--dry-run",
            "--format",
            "json",
            "--now",
            "2024-01-01T02:00:00Z",
            str(history),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["stage_changes"] == 1 and doc["changes"][0]["lead_id"] == "L1"
    assert doc["changes"][0]["new_stage"] == "mql"


def test_cli_refuses_to_run_without_dry_run(tmp_path: Path, cli: typer.Typer) -> None:
    history, new_rules = cli_files(tmp_path)
    result = CliRunner().invoke(cli, ["rescore", "--rules", str(new_rules), str(history)])
    assert result.exit_code == 2
    assert "only --dry-run" in result.output


def test_cli_reports_a_bad_rules_file_by_key(tmp_path: Path, cli: typer.Typer) -> None:
    history, new_rules = cli_files(tmp_path)
    new_rules.write_text("sla:\n  warning_fraction: 3\n")
    result = CliRunner().invoke(cli, ["rescore", "--rules", str(new_rules), "--dry-run", str(history)])
    assert result.exit_code == 2
    assert "leadpulse: error: --rules: new.yaml: sla.warning_fraction: must be < 1" in result.output


def test_cli_says_which_rules_file_is_wrong_when_both_have_the_same_name(
    tmp_path: Path, cli: typer.Typer
) -> None:
    """Both files are often called rules.yaml and the error names only the file's name (rules audit)."""
    history, _ = cli_files(tmp_path)
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new = tmp_path / "old" / "rules.yaml", tmp_path / "new" / "rules.yaml"
    old.write_text("stages:\n  mql_threshold: -1\n")
    new.write_text("version: 1\n")
    args = ["rescore", "--rules", str(new), "--old-rules", str(old), "--dry-run", str(history)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "leadpulse: error: --old-rules: rules.yaml: stages.mql_threshold" in result.output
    result = CliRunner().invoke(
        cli, [*args[:3], "--dry-run", str(history)], env={"LEADPULSE_RULES": str(old)}
    )
    assert result.exit_code == 2
    assert "leadpulse: error: LEADPULSE_RULES: rules.yaml: stages.mql_threshold" in result.output


def test_every_bad_history_line_is_named_at_once(tmp_path: Path) -> None:
    """One bad line per run was all rescore said; a file with a systematic problem took as many runs."""
    from agents.rescore import SHOWN_BAD_LINES

    good = (
        '{"type": "lead_identified", "event_id": "p", "event_time": 1704067200000, "lead_id": "L", '
        '"source": "s"}'
    )
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join([good, "nope", good, *["[]"] * (SHOWN_BAD_LINES + 2)]) + "\n")
    with pytest.raises(HistoryError) as info:
        list(read_history(path))
    message = str(info.value)
    assert message.startswith(f"{SHOWN_BAD_LINES + 3} bad line(s) in {path}; nothing was replayed")
    assert f"{path}:2: not JSON" in message and f"{path}:4: expected a JSON object" in message
    assert message.endswith("... and 3 more")


def test_the_dry_run_table_shows_a_lead_id_as_written_not_as_rich_markup() -> None:
    """Lead ids come from any producer, the page's public write key included, and "[/x]" is a valid one:
    the table read it as rich markup and `rescore --dry-run` ended with MarkupError ("[b]" vanished)."""
    from rich.console import Console

    from agents.rescore import Change, RescoreReport

    console = Console(record=True, width=200)
    changes = [Change(lead, "lead", "mql", 10.0, 60.0, "cold", "hot") for lead in ("[/x]", "[b]")]
    rescore_cmds.render_table(RescoreReport(events=2, leads=2, changes=changes), console)
    text = console.export_text()
    assert "[/x]" in text and "[b]" in text
