"""Review of `leadpulse rescore` as a rules author tunes with it: warnings that are true, and timers that fire
when the worker's scan would have fired them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agents.rescore import LikelyTypo, replay, rescore, unmatched_rules
from agents.rules import DEFAULT_RULES_PATH
from agents.scoring import behaviour_at
from tests.unit.builders import DAY, HOUR, T0, Lead, activity, download, identified, rules, visit
from tests.unit.test_rescore import rescore_app

pytestmark = pytest.mark.unit


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    return rescore_app(monkeypatch)


def test_a_fallback_event_type_rule_is_not_reported_unmatched() -> None:
    """With the shipped rules every generated download has a named asset type, so ``event_type.download``
    matched nothing and was reported as a possible typo; event types are checked when the rules load and a
    fallback nobody needs is no mistake."""
    history = [download(t=T0, asset="whitepaper", event_id="d1"), visit(t=T0, category="blog", event_id="w1")]
    unmatched, typos = unmatched_rules(history, rules())
    assert not [name for name in unmatched if name.startswith("event_type.")]
    assert "asset_type.case_study" in unmatched and typos == {}


def test_only_a_key_close_to_an_unnamed_value_is_called_a_typo(cli: typer.Typer, tmp_path: Path) -> None:
    shipped = DEFAULT_RULES_PATH.read_text()
    typo_rules = tmp_path / "typo.yaml"
    typo_rules.write_text(shipped.replace("    pricing:", "    pricng:", 1))
    events = [identified(lead="L1", t=T0, event_id="p")]
    events += [visit(t=T0 + i * HOUR, category="pricing", event_id=f"w{i}") for i in range(3)]
    events += [download(t=T0, asset="whitepaper", event_id="d1")]
    unmatched, typos = unmatched_rules(events, rules(scoring={"page_category": {"pricng": 10}}))
    assert typos == {"page_category.pricng": LikelyTypo("pricing", 3)} and "page_category.pricng" in unmatched

    history = tmp_path / "h.jsonl"
    history.write_text("".join(json.dumps({"type": s, **e}) + "\n" for s, e in events))
    args = ["rescore", "--rules", str(typo_rules), "--dry-run", "--now", str(T0 + DAY), str(history)]
    table = CliRunner().invoke(cli, args, env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    said = "page_category.pricng matched no event, but 3 event(s) have page_category 'pricing'"
    assert said in table.output
    # the shipped case_study asset type is simply absent here: said, but not as a typo
    [quiet] = [line for line in table.output.splitlines() if "asset_type.case_study" in line]
    assert "typo" not in quiet and "event_type." not in table.output
    as_json = json.loads(CliRunner().invoke(cli, [*args, "--format", "json"]).stdout)
    assert as_json["likely_typos"] == {"page_category.pricng": {"value": "pricing", "events": 3}}


def test_a_recycle_fires_when_it_was_due_not_after_the_whole_history() -> None:
    """An MQL nobody accepted within 14 days is recycled on day 14 by the worker's scan; the rep's
    ``accepted`` on day 20 then finds a recycled lead with its behaviour reset. The replay fired timers only
    once, after every event: day 20 counted as accepted in time, so raising the window to 30 days reported
    no change, while the worker's score moves from cold to warm."""
    history = [
        identified(lead="L1", t=T0, company_size=6000, seniority="c_level", event_id="p"),
        download(t=T0 + HOUR, asset="demo_request", event_id="d"),
        activity("accepted", lead="L1", t=T0 + 20 * DAY, event_id="a"),
    ]
    old, new = rules(), rules(recycle={"mql_not_accepted_days": 30})
    now = T0 + 40 * DAY
    truth = {}
    for name, rules_ in (("old", old), ("new", new)):  # the worker: events as they come, its scan daily
        worker = Lead(rules_)
        worker.send(*history[:2])
        for day in range(1, 20):
            worker.tick(T0 + day * DAY)
        worker.send(history[2])
        worker.tick(now)
        truth[name] = (worker.state().stage, worker.score())
        state = replay(history, rules_, now)["L1"]
        assert (state.stage, state.fit + behaviour_at(state, rules_, state.max_time)) == truth[name]
    [change] = rescore(history, old, new, now).changes
    assert (change.old_band, change.new_band) == ("cold", "warm")
    assert (change.old_score, change.new_score) == (truth["old"][1], truth["new"][1])
