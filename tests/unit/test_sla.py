"""SLA clocks and timer-driven recycles: warning, breach, once only, escalation, rejection feedback."""

from __future__ import annotations

import pytest

from agents.core import check_timers, next_deadline
from agents.stages import recycle_cause
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
        ("mql", "nurturing", "recycled")
    ]
    assert recycle_cause("mql", transition[0]["trigger_event_id"]) == "mql_not_accepted"
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
    assert lead.stages()[-1] == ("customer", "nurturing", "recycled")
    [recycle] = [r for r in lead.of("stage_transition") if r["reason"] == "recycled"]
    assert recycle_cause("customer", recycle["trigger_event_id"]) == "dormant_customer"


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
    the demo request it answers; it answers the clock (9 min in, before any level) as if read after it, so
    nothing fires and no clock is left (the late ones: the tests at the end of this file)."""
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
    assert result.state.timers == {}
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


# --- a follow-up read before the MQL it answers ---------------------------------------------------
# Sales activities and behaviour come on different topics, so the worker may read a follow-up before the event
# that made the lead hot. Audit: the clock was then never started, however late the follow-up came (a
# first_touch 28 h after a 24 h MQL: no warning, no breach), while the same history read in event-time order
# gave both. The answer is judged by event times whichever record is read first.

# clock -> (the events that make the lead hot, the clock's start, its length). The lead is known (profile a
# day before), so the MQL's own time starts the clock in either order.
HOT: dict[str, tuple[list[tuple[str, dict[str, object]]], int, int]] = {
    "1 h": ([download(t=T0, asset="demo_request", event_id="hot-d")], T0, HOUR),
    "24 h": (
        [
            download(t=T0 + 1, asset="whitepaper", event_id="hot-1"),
            download(t=T0 + 2, asset="ebook", event_id="hot-2"),
            view(t=T0 + 3, content_type="webinar", event_id="hot-3"),
            view(t=T0 + 4, content_type="webinar", event_id="hot-4"),
        ],
        T0 + 4,
        24 * HOUR,
    ),
}


def known_lead(segment: str | None = None) -> Lead:
    lead = Lead()
    lead.send(identified(t=T0 - DAY, company_size=6000, seniority="c_level", country="JP", segment=segment))
    return lead


def sla_records(lead: Lead) -> list[tuple[object, ...]]:
    keys = ("sla", "level", "timeout_id", "started_at", "due_at", "owner", "notify")
    return [tuple(r[k] for k in keys) for r in lead.of("sla_timeout")]


def in_either_order(
    hot: list[tuple[str, dict[str, object]]],
    answers: list[tuple[str, dict[str, object]]],
    segment: str | None = None,
) -> tuple[Lead, Lead]:
    """The same history read in event-time order (answers second) and answers first."""
    second, first = known_lead(segment), known_lead(segment)
    second.send(*hot)
    second.send(*answers)
    first.send(*answers)
    first.send(*hot)
    return second, first


@pytest.mark.parametrize("clock", ["1 h", "24 h"])
@pytest.mark.parametrize(
    ("level_at", "off", "levels"),
    [
        (0.5, -1, []),  # just before the warning
        (0.5, 0, []),  # exactly at the warning: in time for it
        (0.5, 1, ["warning"]),
        (1.0, -1, ["warning"]),
        (1.0, 0, ["warning"]),  # exactly at the deadline: in time
        (1.0, 1, ["warning", "breach"]),
        (
            28 / 24,
            0,
            ["warning", "breach"],
        ),  # 28 h after a 24 h MQL (the audit's case), 70 min after a 1 h one
    ],
)
def test_a_follow_up_read_before_its_mql_is_judged_as_if_read_after(
    clock: str, level_at: float, off: int, levels: list[str]
) -> None:
    hot, start, length = HOT[clock]
    answered = start + int(length * level_at) + off
    second, first = in_either_order(hot, [activity("first_touch", t=answered, event_id="touch")])
    assert timeouts(second) == [("hot_lead_follow_up", level) for level in levels]
    assert sla_records(first) == sla_records(second)  # same levels, ids, times, owner
    ids = [r["timeout_id"] for r in first.of("sla_timeout")]
    assert ids == [f"L1:hot_lead_follow_up:{level}:{start}" for level in levels]
    assert [h["sla_due_at"] for h in first.of("hot_lead")] == [start + length]
    # the same clock on the notification (its score and owner are as of what the worker had read)
    assert [(h["became_hot_at"], h["sla_due_at"]) for h in second.of("hot_lead")] == [(start, start + length)]
    for lead in (first, second):
        assert lead.state().timers == {}  # no clock left running
        lead.tick(T0 + 10 * DAY)  # nothing more, ever
    assert sla_records(first) == sla_records(second)


@pytest.mark.parametrize("kind", ["first_touch", "rejected"])
def test_any_follow_up_read_first_fires_what_fell_due_before_it(kind: str) -> None:
    hot, start, _ = HOT["24 h"]
    reason = "no budget" if kind == "rejected" else None
    second, first = in_either_order(hot, [activity(kind, t=start + 28 * HOUR, reason=reason)])
    both = [("hot_lead_follow_up", "warning"), ("hot_lead_follow_up", "breach")]
    assert timeouts(first) == timeouts(second) == both
    assert sla_records(first) == sla_records(second)
    assert "hot_lead_follow_up" not in first.state().timers


def test_a_segment_clock_is_judged_the_same_when_the_follow_up_is_read_first() -> None:
    hot, start, _ = HOT["24 h"]  # enterprise: 4 h
    touch = activity("first_touch", t=start + 5 * HOUR)
    second, first = in_either_order(hot, [touch], segment="enterprise")
    assert timeouts(first) == [("hot_lead_follow_up", "warning"), ("hot_lead_follow_up", "breach")]
    assert sla_records(first) == sla_records(second)
    assert first.of("sla_timeout")[1]["due_at"] == start + 4 * HOUR


def test_a_follow_up_before_the_mql_read_first_does_not_answer_it() -> None:
    hot, start, _ = HOT["1 h"]
    lead = known_lead()
    lead.send(activity("first_touch", t=start - HOUR))  # contacted before it turned hot
    lead.send(*hot)
    assert lead.state().timers["hot_lead_follow_up"].started_at == start  # the clock runs
    assert timeouts(lead) == []
    lead.tick(start + 2 * HOUR)
    assert timeouts(lead) == [("hot_lead_follow_up", "warning"), ("hot_lead_follow_up", "breach")]


def test_the_first_follow_up_at_or_after_the_mql_answers_it_not_the_newest_or_an_earlier_one() -> None:
    hot, start, _ = HOT["24 h"]
    before, late = activity("first_touch", t=start - HOUR), activity("first_touch", t=start + 28 * HOUR)
    second, first = in_either_order(hot, [before, late])
    assert (
        timeouts(first)
        == timeouts(second)
        == [("hot_lead_follow_up", "warning"), ("hot_lead_follow_up", "breach")]
    )
    in_time = activity("first_touch", t=start + HOUR)
    second, first = in_either_order(hot, [in_time, activity("first_touch", t=start + 28 * HOUR)])
    assert timeouts(first) == timeouts(second) == []
    assert first.state().timers == second.state().timers == {}


def test_a_follow_up_read_first_fires_once_across_redelivery_and_a_restart() -> None:
    hot, start, _ = HOT["1 h"]
    touch = activity("first_touch", t=start + 2 * HOUR, event_id="touch")
    lead = known_lead()
    lead.send(touch)
    lead.send(*hot)
    assert len(lead.of("sla_timeout")) == 2
    restored = LeadState.from_bytes(lead.state().to_bytes())
    assert restored == lead.state()
    lead.states["L1"] = restored
    assert lead.send(*hot, touch) == []  # re-read after a restart: duplicates, nothing fired again
    lead.tick(T0 + 30 * DAY)
    assert len(lead.of("sla_timeout")) == 2


def test_follow_up_times_kept_for_a_later_mql_are_bounded() -> None:
    from agents.state import MAX_FOLLOW_UPS

    lead = known_lead()
    for i in range(3 * MAX_FOLLOW_UPS):
        lead.send(activity("first_touch", t=T0 + i * MIN))
    assert len(lead.state().follow_ups) == MAX_FOLLOW_UPS
    lead.send(activity("first_touch", t=T0 + 10 * DAY))  # the rest are older than the late window behind it
    assert lead.state().follow_ups == [T0 + 10 * DAY]


def test_a_state_written_before_the_follow_up_list_keeps_its_newest_follow_up() -> None:
    lead = known_lead()
    lead.send(activity("first_touch", t=T0 + 28 * HOUR))
    old = lead.state().to_dict()
    del old["follow_ups"]
    assert LeadState.from_dict(old).follow_ups == [T0 + 28 * HOUR]
