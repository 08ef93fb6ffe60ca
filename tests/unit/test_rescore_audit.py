"""Rules-author audit of `leadpulse rescore`: replay order, and output a marketing-ops user can read."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agents.rescore import rescore
from agents.rules import DEFAULT_RULES_PATH
from tests.unit.builders import HOUR, T0, activity, download, identified, rules
from tests.unit.test_rescore import rescore_app

pytestmark = pytest.mark.unit

NO_IMMEDIATE = {"demo_request": {"points": 50, "half_life_days": 90, "daily_cap": 1}}


def test_history_out_of_event_time_order_is_replayed_in_event_time_order() -> None:
    """A file of per-type exports concatenated: the rep's rejection comes before the demo request it answers.
    The worker applies them by event time (mql, then recycled to nurturing); rescore replayed file order and
    reported the old stage as mql."""
    profile = identified(lead="M1", t=T0, event_id="p")
    demo = download(lead="M1", t=T0 + HOUR, asset="demo_request", event_id="d")
    rejected = activity("rejected", lead="M1", t=T0 + 3 * HOUR, reason="budget", event_id="a")
    new = rules(scoring={**rules().scoring.model_dump(), "asset_type": NO_IMMEDIATE})
    in_order = rescore([profile, demo, rejected], rules(), new, T0 + 4 * HOUR)
    as_filed = rescore([profile, rejected, demo], rules(), new, T0 + 4 * HOUR)
    assert [(c.old_stage, c.new_stage) for c in in_order.changes] == [("nurturing", "lead")]
    assert as_filed.changes == in_order.changes


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    return rescore_app(monkeypatch)


def run(cli: typer.Typer, tmp_path: Path, lines: list[dict[str, object]], *extra: str) -> str:
    history = tmp_path / "h.jsonl"
    history.write_text("".join(json.dumps(line) + "\n" for line in lines))
    new_rules = tmp_path / "new.yaml"
    shipped = DEFAULT_RULES_PATH.read_text()
    new_rules.write_text(shipped.replace("mql_threshold: 100", "mql_threshold: 52"))
    args = ["rescore", "--rules", str(new_rules), "--dry-run", "--now", "2024-01-02T00:00:00Z", *extra]
    result = CliRunner().invoke(cli, [*args, str(history)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


PROFILE = {"type": "lead_identified", "event_id": "p", "event_time": "2024-01-01T00:00:00Z", "source": "s"}
VISIT = {
    "type": "web_visit",
    "event_id": "w",
    "event_time": "2024-01-01T01:00:00Z",
    "source": "s",
    "url": "https://x.example/pricing",
    "page_category": "pricing",
}
WARM = [  # 45 fit + 10 pricing: warm under the shipped rules, hot at a threshold of 52
    {
        **PROFILE,
        "lead_id": "L1",
        "company_size": 1200,
        "industry": "software",
        "seniority": "vp",
        "country": "US",
    },
    {**VISIT, "lead_id": "L1"},
]


def test_an_empty_history_says_so(cli: typer.Typer, tmp_path: Path) -> None:
    assert run(cli, tmp_path, []).strip() == "The history has no events: nothing to compare."


def test_a_rules_file_is_checked_against_dev_null_or_a_pipe(cli: typer.Typer, tmp_path: Path) -> None:
    """docs/operations.md: check a rules file before an upgrade with `--dry-run /dev/null`; it was refused
    as "neither a file nor an input topic" (only regular files were histories), and so was a pipe such as
    `<(zcat history.jsonl.gz)`."""
    args = ["rescore", "--rules", str(DEFAULT_RULES_PATH), "--dry-run"]
    result = CliRunner().invoke(cli, [*args, os.devnull])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "The history has no events: nothing to compare."
    fifo = tmp_path / "history.pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        with fifo.open("w") as pipe:
            pipe.write(json.dumps({**PROFILE, "lead_id": "L9"}) + "\n")

    writer = threading.Thread(target=feed)
    writer.start()
    result = CliRunner().invoke(cli, [*args, str(fifo)])
    writer.join(10)
    assert result.exit_code == 0, result.output
    assert "(1 leads, 1 events)" in result.output


def test_no_change_says_so_instead_of_an_empty_table(cli: typer.Typer, tmp_path: Path) -> None:
    lines = [{**PROFILE, "lead_id": "L2"}]
    assert run(cli, tmp_path, lines).strip() == "No lead would change stage or band (1 leads, 1 events)."


def test_the_table_ends_with_a_summary_of_the_moves(cli: typer.Typer, tmp_path: Path) -> None:
    output = run(cli, tmp_path, WARM)
    assert "1 would change (1 stage, 1 band)" in output
    assert "stage moves: nurturing -> mql 1" in output and "band moves: warm -> hot 1" in output


def test_json_counts_the_moves(cli: typer.Typer, tmp_path: Path) -> None:
    doc = json.loads(run(cli, tmp_path, WARM, "--format", "json"))
    assert doc["stage_moves"] == {"nurturing -> mql": 1} and doc["band_moves"] == {"warm -> hot": 1}


def test_csv_has_stable_columns(cli: typer.Typer, tmp_path: Path) -> None:
    output = run(cli, tmp_path, WARM, "--format", "csv")
    assert output.splitlines() == [
        "lead_id,old_stage,new_stage,old_band,new_band,old_score,new_score,delta",
        "L1,nurturing,mql,warm,hot,55.000,55.000,0.000",
    ]
    assert run(cli, tmp_path, [], "--format", "csv").splitlines() == [output.splitlines()[0]]


def test_a_bad_now_names_the_option(cli: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "h.jsonl").write_text("")
    args = ["rescore", "--rules", str(DEFAULT_RULES_PATH), "--dry-run", "--now", "yesterday"]
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "h.jsonl")])
    assert result.exit_code == 2 and "--now: not an ISO-8601 timestamp" in result.output


def test_rules_that_match_no_event_of_the_history_are_named(cli: typer.Typer, tmp_path: Path) -> None:
    """A typo in a free-text key (``pricng``) scores nothing and no validation knows the category list;
    the replay does know which rules the history's events hit. Only rules for event types the history holds
    are named (this one has no downloads, so no asset_type rule); never a fallback ``event_type`` rule."""
    from agents.rescore import unmatched_rules
    from agents.rules import load_rules

    shipped = load_rules(DEFAULT_RULES_PATH)
    page_rules = {name for name in shipped.compiled.by_name if name.startswith("page_category.")}
    history = [("web_visit", {**VISIT, "page_category": "pricing"})]
    unmatched, typos = unmatched_rules(history, shipped)
    assert set(unmatched) == page_rules - {"page_category.pricing"} and typos == {}
    typo = tmp_path / "typo.yaml"
    typo.write_text(DEFAULT_RULES_PATH.read_text().replace("    pricing:", "    pricng:", 1))
    history = tmp_path / "h.jsonl"
    history.write_text("".join(json.dumps(line) + "\n" for line in WARM))
    args = ["rescore", "--rules", str(typo), "--dry-run", "--now", "2024-01-02T00:00:00Z", "--format", "json"]
    result = CliRunner().invoke(cli, [*args, str(history)])
    assert result.exit_code == 0, result.output
    unmatched = json.loads(result.stdout)["unmatched_rules"]
    assert "page_category.pricng" in unmatched and not any(n.startswith("asset_type.") for n in unmatched)
    table = CliRunner().invoke(cli, [*args[:-2], str(history)], env={"COLUMNS": "200"}).output
    assert "had no event to score in this history" in table and "page_category.pricng" in table
