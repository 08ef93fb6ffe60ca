"""Funnel stages: every entry and exit, recycles, disqualification, edges, ids, event-time ordering."""

from __future__ import annotations

import pytest

from agents.rules import load_rules
from agents.stages import ALLOWED_EDGES, STAGES, IllegalTransition, activity_move, move, recycle_cause
from agents.state import LeadState
from tests.unit.builders import DAY, HOUR, MIN, T0, Lead, activity, click, download, identified, view, visit

pytestmark = pytest.mark.unit


def hot(lead: Lead, t: int = T0) -> None:
    """Make L1 an MQL by a direct inquiry."""
    lead.send(download(t=t, asset="inquiry"))


def test_stage_ids_are_the_contract_ids() -> None:
    assert STAGES == (
        "awareness",
        "lead",
        "nurturing",
        "mql",
        "sal",
        "opportunity",
        "customer",
        "expansion",
        "disqualified",
    )
    assert set(ALLOWED_EDGES) == set(STAGES)
    assert all(targets <= set(STAGES) for targets in ALLOWED_EDGES.values())


def test_first_event_of_a_lead_moves_awareness_to_lead() -> None:
    lead = Lead()
    lead.send(identified(t=T0, event_id="p1"))
    assert lead.stages() == [("awareness", "lead", "identified")]
    record = lead.of("stage_transition")[0]
    assert (
        record["trigger_event_id"] == "p1"
        and record["occurred_at"] == T0
        and record["transition_id"] == "L1:1"
    )


def test_anonymous_visitor_stays_in_awareness_and_emits_nothing() -> None:
    lead = Lead()
    assert lead.send(visit(lead=None, anon="A1", category="pricing")) == []
    assert lead.state("A1").stage == "awareness"


@pytest.mark.parametrize(
    "engaging", [click(t=T0 + 1), visit(t=T0 + 1, category="product"), visit(t=T0 + 1, category="pricing")]
)
def test_email_click_or_product_page_makes_a_lead_nurturing(engaging: tuple[str, dict]) -> None:
    lead = Lead()
    lead.send(identified(), engaging)
    assert lead.stages()[-1] == ("lead", "nurturing", "engaged")


@pytest.mark.parametrize("link", ["https://example.com/unsubscribe?u=1", "bounce://550"])
def test_an_unsubscribe_or_bounce_click_is_not_engagement(link: str) -> None:
    """Found by an audit: every email_click counted as engaged, so an unsubscribe moved a lead to
    nurturing with a score of -25."""
    lead = Lead()
    lead.send(identified(), click(t=T0 + 1, link=link))
    assert lead.state().stage == "lead"
    assert lead.stages() == [("awareness", "lead", "identified")]


def test_blog_visit_is_not_engagement() -> None:
    lead = Lead()
    lead.send(identified(), visit(t=T0 + 1, category="blog"))
    assert lead.state().stage == "lead"


@pytest.mark.parametrize("asset", ["catalog", "inquiry", "demo_request"])
def test_direct_inquiry_makes_an_mql_at_once(asset: str) -> None:
    lead = Lead()
    lead.send(identified(), download(t=T0 + 1, asset=asset))
    assert lead.stages()[-1] == ("lead", "mql", "immediate_mql")
    assert lead.of("hot_lead")[0]["reason"] == f"immediate_mql:asset_type.{asset}"


def test_score_above_threshold_makes_an_mql() -> None:
    lead = Lead()
    lead.send(identified(company_size=6000, seniority="c_level", country="JP"))  # fit 50
    lead.send(view(t=T0 + 1, content_type="webinar"), view(t=T0 + 2, content_type="webinar"))
    assert lead.state().stage == "lead"
    lead.send(download(t=T0 + 3, asset="whitepaper"), download(t=T0 + 4, asset="ebook"))
    assert lead.stages()[-1] == ("lead", "mql", "score_threshold")
    hot_lead = lead.of("hot_lead")[0]
    assert hot_lead["score"] > 100 and hot_lead["reason"] == "score_threshold"
    assert hot_lead["notification_id"] == "L1:hot:2"


def test_score_exactly_at_threshold_is_not_hot() -> None:
    from tests.unit.builders import rules

    r = rules(scoring={"event_type": {"web_visit": {"points": 100}}, "page_category": {}})
    lead = Lead(r)
    lead.send(visit(t=T0, category="blog"))
    assert lead.state().stage == "lead"


def test_one_event_may_move_two_stages_and_each_move_is_emitted() -> None:
    lead = Lead()
    lead.send(identified(company_size=6000, seniority="c_level", country="JP"))
    lead.send(
        download(t=T0 + 1, asset="whitepaper"),
        download(t=T0 + 2, asset="ebook"),
        view(t=T0 + 3, content_type="webinar"),
    )
    lead.send(visit(t=T0 + 4, category="pricing"))  # engaged and over the threshold at once
    assert lead.stages()[-2:] == [("lead", "nurturing", "engaged"), ("nurturing", "mql", "score_threshold")]
    ids = [r["transition_id"] for r in lead.of("stage_transition")]
    assert ids == ["L1:1", "L1:2", "L1:3"]


@pytest.mark.parametrize(("kind", "reason"), [("accepted", "accepted"), ("meeting_booked", "meeting_booked")])
def test_sales_acceptance_or_meeting_makes_sal(kind: str, reason: str) -> None:
    lead = Lead()
    hot(lead)
    lead.send(activity(kind, t=T0 + HOUR))
    assert lead.stages()[-1] == ("mql", "sal", reason)


def test_full_journey_to_expansion() -> None:
    lead = Lead()
    hot(lead)
    lead.send(
        activity("accepted", t=T0 + HOUR),
        activity("opportunity_created", t=T0 + DAY),
        activity("closed_won", t=T0 + 9 * DAY),
        activity("onboarded", t=T0 + 10 * DAY),
        activity("upsell_opened", t=T0 + 60 * DAY),
        activity("closed_won", t=T0 + 90 * DAY),
    )
    assert [(f, t) for f, t, _ in lead.stages()] == [
        ("awareness", "lead"),
        ("lead", "mql"),
        ("mql", "sal"),
        ("sal", "opportunity"),
        ("opportunity", "customer"),
        ("customer", "expansion"),
        ("expansion", "customer"),
    ]


def test_onboarding_without_recorded_win_makes_a_customer() -> None:
    lead = Lead()
    hot(lead)
    lead.send(activity("onboarded", t=T0 + DAY))
    assert lead.stages()[-1] == ("mql", "customer", "onboarded")


def test_rejected_mql_is_recycled_to_nurturing_with_behaviour_reset() -> None:
    lead = Lead()
    hot(lead)
    lead.send(activity("rejected", t=T0 + HOUR, reason="no budget"))
    assert lead.stages()[-1] == ("mql", "nurturing", "recycled")  # DESIGN §2: the `recycled` reason
    assert lead.score() == 0
    assert any("recycled (rejected): behaviour reset" in s["change_reason"] for s in lead.of("lead_score"))
    lead.send(download(t=T0 - MIN, asset="whitepaper"))  # from before the recycle: not scored
    assert lead.score() == 0


def test_recycled_lead_can_become_mql_again_with_a_new_notification() -> None:
    lead = Lead()
    hot(lead)
    lead.send(activity("rejected", t=T0 + HOUR, reason="timing"))
    lead.send(download(t=T0 + 2 * DAY, asset="demo_request"))
    assert lead.stages()[-1] == ("nurturing", "mql", "immediate_mql")
    assert [h["notification_id"] for h in lead.of("hot_lead")] == ["L1:hot:2", "L1:hot:4"]


def test_lost_deal_is_recycled_to_nurturing() -> None:
    lead = Lead()
    hot(lead)
    lead.send(
        activity("opportunity_created", t=T0 + DAY), activity("closed_lost", t=T0 + 5 * DAY, reason="price")
    )
    assert lead.stages()[-1] == ("opportunity", "nurturing", "recycled")
    assert any("recycled (closed_lost): behaviour reset" in s["change_reason"] for s in lead.of("lead_score"))


def test_lost_upsell_returns_to_customer() -> None:
    lead = Lead()
    lead.send(
        activity("closed_won", t=T0),
        activity("upsell_opened", t=T0 + DAY),
        activity("closed_lost", t=T0 + 2 * DAY),
    )
    assert lead.stages()[-1] == ("expansion", "customer", "closed_lost")


def test_late_rejection_does_not_undo_a_newer_acceptance() -> None:
    lead = Lead()
    hot(lead)
    lead.send(activity("accepted", t=T0 + 2 * HOUR), activity("rejected", t=T0 + HOUR, reason="x"))
    assert lead.state().stage == "sal"


def test_forward_move_from_an_older_event_is_clamped_to_keep_history_ordered() -> None:
    lead = Lead()
    hot(lead, t=T0 + DAY)
    lead.send(activity("accepted", t=T0 + HOUR))  # recorded in the CRM before the inquiry arrived
    record = lead.of("stage_transition")[-1]
    assert record["to_stage"] == "sal" and record["occurred_at"] == T0 + DAY


def test_disqualifying_profile_moves_any_pre_customer_stage_to_disqualified() -> None:
    lead = Lead()
    hot(lead)
    lead.send(identified(t=T0 + HOUR, email="x@uni.ac.jp"))
    assert lead.stages()[-1] == ("mql", "disqualified", "disqualified:email_domain:uni.ac.jp")
    assert "hot_lead_follow_up" not in lead.state().timers


def test_a_disqualified_lead_is_never_in_the_hot_band_whatever_its_score() -> None:
    lead = Lead()
    lead.send(identified(t=T0, company_size=6000, seniority="c_level", country="JP", event_id="p1"))
    for i, asset in enumerate(("demo_request", "whitepaper", "case_study", "catalog")):
        lead.send(download(t=T0 + (i + 1) * MIN, asset=asset, event_id=f"d{i}"))
    assert lead.of("lead_score")[-1]["band"] == "hot"
    lead.send(identified(t=T0 + HOUR, email="x@uni.ac.jp", event_id="p2"))
    last = lead.of("lead_score")[-1]
    assert last["stage"] == "disqualified"
    assert last["score"] > load_rules(None).stages.mql_threshold  # the score is kept ...
    assert last["band"] == "cold"  # ... but it is not a hot lead (DESIGN §2)


def test_disqualified_lead_is_requalified_by_a_newer_clean_profile() -> None:
    lead = Lead()
    lead.send(identified(t=T0, flags=["retiree"]))
    lead.send(identified(t=T0 + DAY, flags=[]))
    assert lead.stages()[-2:] == [
        ("lead", "disqualified", "disqualified:flag:retiree"),
        ("disqualified", "lead", "requalified"),
    ]


def test_older_profile_does_not_override_a_newer_one() -> None:
    lead = Lead()
    lead.send(identified(t=T0 + DAY, flags=[]), identified(t=T0, flags=["student"]))
    assert lead.state().stage == "lead"
    assert lead.state().disqualified_by is None


def test_customer_is_not_disqualified_by_profile() -> None:
    lead = Lead()
    lead.send(activity("closed_won", t=T0), identified(t=T0 + DAY, flags=["competitor"]))
    assert lead.state().stage == "customer"


def test_sales_activities_do_not_move_a_disqualified_lead() -> None:
    lead = Lead()
    lead.send(identified(flags=["student"]), activity("accepted", t=T0 + 1))
    assert lead.state().stage == "disqualified"


def test_activity_move_table() -> None:
    assert activity_move("mql", "first_touch", T0, T0) is None
    assert activity_move("customer", "opportunity_created", T0, T0) is None
    assert activity_move("lead", "rejected", T0, T0) is None
    assert activity_move("sal", "rejected", T0 + 1, T0) == ("nurturing", "recycled")
    assert activity_move("sal", "rejected", T0 - 1, T0) is None


def test_recycle_cause_comes_from_the_trigger() -> None:
    """The reason of every recycle is ``recycled`` (DESIGN §2); the cause is read off the trigger."""
    assert recycle_cause("mql", "e-rejected-1") == "rejected"
    assert recycle_cause("sal", "e-rejected-2") == "rejected"
    assert recycle_cause("opportunity", "e-lost-1") == "closed_lost"
    assert recycle_cause("mql", "timer:L:1:mql_not_accepted:1795000000000") == "mql_not_accepted"  # ':' in id
    assert recycle_cause("expansion", "timer:L1:dormant_customer:1795000000000") == "dormant_customer"


def test_move_refuses_an_edge_outside_the_table() -> None:
    state = LeadState(key="L1", lead_id="L1", stage="customer")
    with pytest.raises(IllegalTransition, match="customer -> mql"):
        move(state, "mql", "score_threshold", "e1", T0)


def test_transitions_are_deterministic_on_replay() -> None:
    events = [
        identified(event_id="p"),
        download(t=T0 + 1, asset="inquiry", event_id="d"),
        activity("accepted", t=T0 + 2, event_id="a"),
    ]
    first, second = Lead(), Lead()
    first.send(*events)
    second.send(*events)
    assert first.of("stage_transition") == second.of("stage_transition")
    assert first.of("hot_lead") == second.of("hot_lead")
