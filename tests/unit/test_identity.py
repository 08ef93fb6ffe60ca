"""Identity stitching in two hops through forwards: anonymous history joins its lead, replays are harmless."""

from __future__ import annotations

import pytest

from agents.core import step
from agents.identity import ALIAS_SCHEMA, alias_instruction
from schemas.registry import default_registry
from tests.unit.builders import DAY, HOUR, MIN, T0, Lead, download, identified, rules, visit

pytestmark = pytest.mark.unit


def test_lead_identified_records_the_alias_and_yields_an_instruction_keyed_by_the_anonymous_id() -> None:
    schema, event = identified(t=T0, anon="A1", event_id="p1")
    result = step(None, "L1", schema, event, rules(), T0)
    assert result.state.aliases == ["A1"]
    [forward] = result.forwards
    assert forward.key == "A1" and forward.schema == ALIAS_SCHEMA
    assert forward.event["lead_id"] == "L1" and forward.event["anonymous_id"] == "A1"
    default_registry().encode(forward.schema, forward.event)  # travels as a valid lead_identified record


def test_anonymous_history_is_folded_into_the_lead_score() -> None:
    lead = Lead()
    lead.send(
        visit(lead=None, anon="A1", t=T0, category="pricing"), download(lead=None, anon="A1", t=T0 + MIN)
    )
    assert lead.outputs == []
    lead.send(identified(t=T0 + HOUR, anon="A1"))
    assert lead.state("A1").merged_into == "L1" and lead.state("A1").buffer == []
    expected_rules = {"page_category.pricing", "asset_type.whitepaper"}
    assert {r["rule"] for r in lead.of("lead_score")[-1]["reasons"]} == expected_rules
    assert lead.score() == pytest.approx(
        10 * 0.5 ** (HOUR / (14 * DAY)) + 15 * 0.5 ** ((HOUR - MIN) / (60 * DAY))
    )


def test_stitched_history_can_make_a_hot_lead() -> None:
    lead = Lead()
    lead.send(download(lead=None, anon="A1", t=T0, asset="demo_request"))
    lead.send(identified(t=T0 + HOUR, anon="A1"))
    assert lead.state().stage == "mql"
    assert len(lead.of("hot_lead")) == 1


def test_later_anonymous_event_is_forwarded_to_the_lead() -> None:
    lead = Lead()
    lead.send(identified(t=T0, anon="A1"))
    lead.send(visit(lead=None, anon="A1", t=T0 + DAY, category="pricing"))
    assert lead.state("A1").buffer == []
    assert lead.score() == pytest.approx(10)


def test_late_anonymous_event_after_the_stitch_still_reaches_the_lead() -> None:
    lead = Lead()
    lead.send(visit(lead=None, anon="A1", t=T0 + DAY, category="blog"))
    lead.send(identified(t=T0 + 2 * DAY, anon="A1"))
    lead.send(visit(lead=None, anon="A1", t=T0, category="pricing"))  # happened first, arrived last
    assert lead.score() == pytest.approx(10 * 0.5 ** (2 * DAY / (14 * DAY)) + 1 * 0.5 ** (DAY / (30 * DAY)))


def test_replayed_alias_instruction_and_forwards_are_harmless() -> None:
    lead = Lead()
    lead.send(visit(lead=None, anon="A1", t=T0, category="pricing", event_id="w1"))
    lead.send(identified(t=T0 + HOUR, anon="A1", event_id="p1"))
    score = lead.score()
    replay = alias_instruction("L1", "A1", "p1", T0 + HOUR)
    lead.send((replay.schema, replay.event), key="A1")  # buffer already handed over: nothing to forward
    lead.send(visit(lead="L1", anon="A1", t=T0, category="pricing", event_id="w1"))  # forwarded again
    assert lead.results[-1].dropped == "duplicate"
    assert lead.score() == pytest.approx(score)


def test_duplicate_lead_identified_resends_the_instruction() -> None:
    lead = Lead()
    event = identified(t=T0, anon="A1", event_id="p1")
    lead.send(event)
    schema, record = event
    result = step(lead.state(), "L1", schema, record, lead.rules, T0)
    assert result.dropped == "duplicate"
    assert [f.key for f in result.forwards] == ["A1"]


def test_alias_to_an_unknown_anonymous_key_merges_future_events() -> None:
    lead = Lead()
    lead.send(identified(t=T0, anon="A2"))
    assert lead.state("A2").merged_into == "L1"
    lead.send(download(lead=None, anon="A2", t=T0 + 1, asset="inquiry"))
    assert lead.state().stage == "mql"


def test_anonymous_duplicates_are_buffered_once_and_the_buffer_is_bounded() -> None:
    lead = Lead(rules(state={"anonymous_buffer": 3}))
    events = [visit(lead=None, anon="A1", t=T0 + i, category="blog", event_id=f"a{i}") for i in range(5)]
    lead.send(*events, events[4])
    assert [e["event_id"] for _, e in lead.state("A1").buffer] == ["a2", "a3", "a4"]


def test_newest_alias_wins_for_later_events_on_a_shared_device() -> None:
    lead = Lead()
    lead.send(identified(lead="L1", t=T0, anon="A1"), identified(lead="L2", t=T0 + 1, anon="A1"))
    lead.send(visit(lead=None, anon="A1", t=T0 + 2, category="pricing"))
    assert lead.score("L2") == pytest.approx(10)


def test_forwarded_events_validate_against_their_schema() -> None:
    lead = Lead()
    lead.send(visit(lead=None, anon="A1", t=T0, category="pricing"))
    lead.send(identified(t=T0 + 1, anon="A1"))
    registry = default_registry()
    forwards = [f for r in lead.results for f in r.forwards]
    assert {f.schema for f in forwards} == {"lead_identified", "web_visit"}
    for forward in forwards:
        registry.validate(forward.schema, forward.event)
