"""SLA clocks and timer-driven recycles: warning, breach, once only, escalation, rejection feedback."""

from __future__ import annotations

import pytest

from agents.core import check_timers, next_deadline
from agents.state import LeadState
from schemas.registry import default_registry
from tests.unit.builders import DAY, HOUR, MIN, T0, Lead, activity, download, identified, rules, view

pytestmark = pytest.mark.unit


def timeouts(lead: Lead) -> list[tuple[str, str]]:
    return [(r["sla"], r["level"]) for r in lead.of("sla_timeout")]


def score_hot(lead: Lead, t: int = T0) -> None:
    """MQL by score (24 h follow-up): fit 50 + 4 downloads/views."""
    lead.send(identified(t=t, company_size=6000, seniority="c_level", country="JP", owner="rep7"))
    lead.send(
        download(t=t + 1, asset="whitepaper"),
        download(t=t + 2, asset="ebook"),
        view(t=t + 3, content_type="webinar"),
        view(t=t + 4, content_type="webinar"),
    )


def test_hot_lead_carries_the_follow_up_due_time() -> None:
    lead = Lead()
    score_hot(lead)
    assert lead.of("hot_lead")[0]["sla_due_at"] == T0 + 4 + 24 * HOUR
    assert lead.of("hot_lead")[0]["owner"] == "rep7"


def test_direct_inquiry_gets_the_one_hour_follow_up() -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="demo_request"))
    assert lead.of("hot_lead")[0]["sla_due_at"] == T0 + HOUR


def test_segment_overrides_the_follow_up_time() -> None:
    lead = Lead()
    lead.send(identified(segment="enterprise", company_size=6000, seniority="c_level", country="JP"))
    lead.send(
        download(t=T0 + 1, asset="whitepaper"),
        download(t=T0 + 2, asset="ebook"),
        view(t=T0 + 3, content_type="webinar"),
        view(t=T0 + 4, content_type="webinar"),
    )
    assert lead.of("hot_lead")[0]["sla_due_at"] == T0 + 4 + 4 * HOUR


def test_warning_at_half_then_breach_at_due_each_once() -> None:
    lead = Lead()
    score_hot(lead)
    start = T0 + 4
    assert lead.tick(start + 12 * HOUR - 1) == []
    assert [o.record["level"] for o in lead.tick(start + 12 * HOUR)] == ["warning"]
    assert lead.tick(start + 13 * HOUR) == []
    assert [o.record["level"] for o in lead.tick(start + 24 * HOUR)] == ["breach"]
    assert lead.tick(start + 25 * HOUR) == []
    assert timeouts(lead) == [("hot_lead_follow_up", "warning"), ("hot_lead_follow_up", "breach")]


def test_levels_fire_once_across_a_state_round_trip() -> None:
    lead = Lead()
    score_hot(lead)
    r = lead.rules
    first = check_timers(lead.state(), r, T0 + 13 * HOUR)
    assert [o.record["level"] for o in first.outputs] == ["warning"]
    restored = LeadState.from_dict(first.state.to_dict())
    assert check_timers(restored, r, T0 + 13 * HOUR).outputs == []
    from_bytes = LeadState.from_bytes(restored.to_bytes())
    assert [o.record["level"] for o in check_timers(from_bytes, r, T0 + 30 * HOUR).outputs] == ["breach"]


def test_scan_long_after_due_fires_warning_and_breach_together() -> None:
    lead = Lead()
    score_hot(lead)
    assert [o.record["level"] for o in lead.tick(T0 + 2 * DAY)] == ["warning", "breach"]


def test_escalation_ladder_names_who_is_notified() -> None:
    lead = Lead()
    score_hot(lead)
    warning, breach = lead.tick(T0 + 2 * DAY)
    assert warning.record["notify"] == ["owner"]
    assert breach.record["notify"] == ["owner", "manager"]
    assert breach.record["owner"] == "rep7" and breach.record["fired_at"] == T0 + 2 * DAY


def test_escalation_ladder_is_configurable() -> None:
    lead = Lead(rules(sla={"escalation": {"warning": ["owner", "team_lead"], "breach": ["vp_sales"]}}))
    score_hot(lead)
    assert [o.record["notify"] for o in lead.tick(T0 + 2 * DAY)] == [["owner", "team_lead"], ["vp_sales"]]


def test_timeout_ids_are_deterministic() -> None:
    lead = Lead()
    score_hot(lead)
    ids = [o.record["timeout_id"] for o in lead.tick(T0 + 2 * DAY)]
    assert ids == [f"L1:hot_lead_follow_up:warning:{T0 + 4}", f"L1:hot_lead_follow_up:breach:{T0 + 4}"]


@pytest.mark.parametrize("kind", ["first_touch", "accepted", "rejected", "meeting_booked"])
def test_follow_up_stops_the_clock(kind: str) -> None:
    lead = Lead()
    score_hot(lead)
    lead.send(activity(kind, t=T0 + HOUR, reason="fit" if kind == "rejected" else None))
    assert [o for o in lead.tick(T0 + 2 * DAY) if o.schema == "sla_timeout"] == []


def test_follow_up_after_the_warning_prevents_the_breach() -> None:
    lead = Lead()
    score_hot(lead)
    lead.tick(T0 + 13 * HOUR)
    lead.send(activity("first_touch", t=T0 + 14 * HOUR))
    lead.tick(T0 + 3 * DAY)
    assert timeouts(lead) == [("hot_lead_follow_up", "warning")]


def test_late_mql_starts_no_clock() -> None:
    lead = Lead()
    lead.send(identified(t=T0 + 10 * DAY))
    lead.send(download(t=T0, asset="demo_request"))
    assert lead.state().stage == "mql"
    assert [o for o in lead.tick(T0 + 11 * DAY) if o.schema == "sla_timeout"] == []


def test_rejection_without_reason_breaches_the_feedback_sla() -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="inquiry"))
    lead.send(activity("rejected", t=T0 + HOUR, reason=None))
    assert lead.tick(T0 + HOUR + 2 * DAY - 1) == []
    fired = lead.tick(T0 + HOUR + 2 * DAY)
    assert [(o.record["sla"], o.record["level"]) for o in fired] == [("rejection_feedback", "breach")]
    assert fired[0].record["due_at"] == T0 + HOUR + 2 * DAY
    assert lead.tick(T0 + 10 * DAY) == []


def test_reason_given_later_stops_the_feedback_sla() -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="inquiry"))
    lead.send(activity("rejected", t=T0 + HOUR), activity("rejected", t=T0 + DAY, reason="no budget"))
    assert lead.tick(T0 + 5 * DAY) == []


def test_mql_not_accepted_in_time_is_recycled() -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="inquiry"))
    lead.tick(T0 + 14 * DAY - 1)
    assert lead.state().stage == "mql"
    outputs = lead.tick(T0 + 20 * DAY)
    transition = [o.record for o in outputs if o.schema == "stage_transition"]
    assert [(t["from_stage"], t["to_stage"], t["reason"]) for t in transition] == [
        ("mql", "nurturing", "recycled:mql_not_accepted")
    ]
    assert transition[0]["occurred_at"] == T0 + 14 * DAY
    assert transition[0]["trigger_event_id"] == f"timer:L1:mql_not_accepted:{T0 + 14 * DAY}"
    assert lead.tick(T0 + 40 * DAY) == []


def test_accepted_mql_is_not_recycled() -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="inquiry"), activity("accepted", t=T0 + HOUR))
    lead.tick(T0 + 30 * DAY)
    assert lead.state().stage == "sal"


def test_dormant_customer_is_recycled_after_the_configured_days() -> None:
    lead = Lead()
    lead.send(activity("closed_won", t=T0), activity("onboarded", t=T0 + 10 * DAY))
    lead.tick(T0 + 189 * DAY)
    assert lead.state().stage == "customer"
    lead.tick(T0 + 190 * DAY)
    assert lead.stages()[-1] == ("customer", "nurturing", "recycled:dormant_customer")


def test_sales_activity_keeps_a_customer_from_going_dormant() -> None:
    lead = Lead()
    lead.send(activity("closed_won", t=T0), activity("first_touch", t=T0 + 150 * DAY))
    lead.tick(T0 + 200 * DAY)
    assert lead.state().stage == "customer"


def test_next_deadline_points_at_the_earliest_pending_level() -> None:
    lead = Lead()
    assert next_deadline(LeadState(key="A1"), lead.rules) is None
    lead.send(download(t=T0, asset="inquiry"))
    assert next_deadline(lead.state(), lead.rules) == T0 + 30 * MIN
    lead.tick(T0 + 30 * MIN)
    assert next_deadline(lead.state(), lead.rules) == T0 + HOUR
    lead.tick(T0 + HOUR)
    assert next_deadline(lead.state(), lead.rules) == T0 + 14 * DAY


def test_timer_outputs_validate_against_their_schemas() -> None:
    lead = Lead()
    score_hot(lead)
    lead.tick(T0 + 20 * DAY)
    lead.send(activity("rejected", t=T0 + 21 * DAY))
    lead.tick(T0 + 30 * DAY)
    registry = default_registry()
    kinds = set()
    for output in lead.outputs:
        registry.validate(output.schema, output.record)
        registry.encode(output.schema, output.record)
        kinds.add(output.schema)
    assert kinds == {"lead_score", "stage_transition", "hot_lead", "sla_timeout"}


def test_follow_up_that_arrives_before_its_mql_event_still_stops_the_sla() -> None:
    """Sales activities and downloads travel on different topics, so a first_touch can be processed before
    the demo request it answers; the SLA clock must not start (and breach) for a lead already touched."""
    from agents.core import check_timers, step
    from agents.rules import load_rules

    rules = load_rules(None)
    t0 = 1_790_000_000_000
    profile = {
        "event_id": "p",
        "event_time": t0,
        "lead_id": "L",
        "source": "crm",
        "flags": [],
        "email": "x@buyer.example",
    }
    touch = {
        "event_id": "s",
        "event_time": t0 + 600_000,
        "lead_id": "L",
        "source": "crm",
        "activity": "first_touch",
        "owner": "rep",
        "reason": None,
        "amount": None,
    }
    demo = {
        "event_id": "d",
        "event_time": t0 + 60_000,
        "lead_id": "L",
        "source": "web",
        "content_id": "demo",
        "asset_type": "demo_request",
        "anonymous_id": None,
    }
    state = step(None, "L", "lead_identified", profile, rules, t0).state
    state = step(state, "L", "sales_activity", touch, rules, t0).state  # arrives first
    result = step(state, "L", "download", demo, rules, t0)
    assert result.state.stage == "mql"
    assert [o.schema for o in result.outputs].count("hot_lead") == 1
    later = check_timers(result.state, rules, t0 + 10 * 24 * 3_600_000)
    assert [o for o in later.outputs if o.schema == "sla_timeout"] == []


def test_a_later_rejection_without_reason_gets_its_own_feedback_sla_after_the_first_breached() -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="inquiry"))
    lead.send(activity("rejected", t=T0 + HOUR, reason=None))
    assert [o.record["level"] for o in lead.tick(T0 + HOUR + 2 * DAY)] == ["breach"]
    lead.send(download(t=T0 + 5 * DAY, asset="inquiry", event_id="again"))  # hot again
    lead.send(activity("rejected", t=T0 + 6 * DAY, reason=None, event_id="rejected-again"))
    early = lead.tick(T0 + 8 * DAY - 1)
    assert [o for o in early if o.schema == "sla_timeout"] == []
    fired = [o for o in lead.tick(T0 + 8 * DAY) if o.schema == "sla_timeout"]
    assert [(o.record["sla"], o.record["level"], o.record["started_at"]) for o in fired] == [
        ("rejection_feedback", "breach", T0 + 6 * DAY)
    ]


# --- a clock stopped by an answer that came too late ----------------------------------------------
# Whether sales answered in time is a fact of event times: the same follow-up must give the same SLA events
# whether or not a timer scan ran between the MQL and the follow-up (a burst, a backlog or a replay has no
# scan in between). Black-box audit: a first_touch 2 h after a 1 h deadline, sent in one burst, breached
# nothing.


@pytest.mark.parametrize(
    ("answered_after", "levels"),
    [
        (10 * MIN, []),  # before the half-time warning
        (30 * MIN, []),  # exactly at the warning: in time for it
        (30 * MIN + 1, ["warning"]),
        (HOUR, ["warning"]),  # exactly at the due time: in time
        (HOUR + 1, ["warning", "breach"]),
        (2 * HOUR, ["warning", "breach"]),
    ],
)
def test_a_follow_up_after_a_level_fell_due_fires_it(answered_after: int, levels: list[str]) -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="demo_request"))  # 1 h follow-up
    lead.send(activity("first_touch", t=T0 + answered_after))
    assert timeouts(lead) == [("hot_lead_follow_up", level) for level in levels]
    assert "hot_lead_follow_up" not in lead.state().timers
    lead.tick(T0 + 30 * DAY)  # a scan long after: nothing more, ever
    assert timeouts(lead) == [("hot_lead_follow_up", level) for level in levels]


def test_with_or_without_a_scan_in_between_the_same_events_give_the_same_levels() -> None:
    scanned, burst = Lead(), Lead()
    for lead in (scanned, burst):
        lead.send(download(t=T0, asset="demo_request"))
    scanned.tick(T0 + 45 * MIN)  # the warning fires from the scan
    for lead in (scanned, burst):
        lead.send(activity("first_touch", t=T0 + 2 * HOUR))
    both = [("hot_lead_follow_up", "warning"), ("hot_lead_follow_up", "breach")]
    assert timeouts(scanned) == timeouts(burst) == both
    ids = [r["timeout_id"] for r in scanned.of("sla_timeout")]
    assert ids == [r["timeout_id"] for r in burst.of("sla_timeout")] and len(set(ids)) == 2


@pytest.mark.parametrize(
    "ending",
    [
        activity("accepted", t=T0 + 3 * HOUR),  # moves mql -> sal
        identified(t=T0 + 3 * HOUR, flags=["competitor"]),  # disqualified
    ],
    ids=["accepted", "disqualified"],
)
def test_an_mql_left_after_its_deadline_still_breaches(ending: tuple[str, dict[str, object]]) -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="demo_request"))
    lead.send(ending)
    assert timeouts(lead) == [("hot_lead_follow_up", "warning"), ("hot_lead_follow_up", "breach")]


def test_a_rejection_reason_after_the_feedback_deadline_still_breaches() -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="demo_request"))
    lead.send(activity("rejected", t=T0 + MIN))  # no reason: 2-day feedback clock
    lead.send(activity("rejected", t=T0 + 3 * DAY, reason="no budget"))
    assert ("rejection_feedback", "breach") in timeouts(lead)
    assert "rejection_feedback" not in lead.state().timers


def test_a_rejection_reason_in_time_stops_the_feedback_clock_quietly() -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="demo_request"))
    lead.send(activity("rejected", t=T0 + MIN))
    assert "rejection_feedback" in lead.state().timers  # the clock did start
    lead.send(activity("rejected", t=T0 + DAY, reason="no budget"))
    assert "rejection_feedback" not in lead.state().timers
    lead.tick(T0 + 10 * DAY)
    assert timeouts(lead) == []  # quietly: no SLA event of any kind, ever
