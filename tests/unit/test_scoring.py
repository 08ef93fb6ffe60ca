"""Scoring: fit, per-rule decay on event time, caps, negatives, duplicates, order, late events, accounts."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from agents import core
from agents import rescore as rescore_module
from agents import worker_records as worker
from agents.account import (
    AccountState,
    account_score_record,
    apply_lead_score,
    fold_lead_score,
    new_account,
    without_lead,
)
from agents.core import step
from agents.rescore import replay
from agents.rules import RulesError, load_rules, rules_from_mapping
from agents.scoring import band, disqualification, profile_fit
from agents.state import LeadState
from schemas.registry import default_registry
from tests.unit.builders import (
    DAY,
    HOUR,
    MIN,
    T0,
    Lead,
    activity,
    click,
    download,
    identified,
    rules,
    view,
    visit,
)

pytestmark = pytest.mark.unit


def closed_form(points: float, age_ms: int, half_life_days: float) -> float:
    return points * 0.5 ** (age_ms / (half_life_days * DAY))


def assert_valid(lead: Lead) -> None:
    registry = default_registry()
    for output in lead.outputs:
        registry.validate(output.schema, output.record)
        registry.encode(output.schema, output.record)


# --- fit ------------------------------------------------------------------------------------------


def test_fit_adds_size_band_industry_seniority_and_country() -> None:
    profile = {"company_size": 250, "industry": "software", "seniority": "director", "country": "jp"}
    assert profile_fit(profile, rules()) == 10 + 10 + 12 + 10


def test_title_keywords_count_only_when_seniority_is_missing() -> None:
    r = rules()
    assert profile_fit({"job_title": "VP of Sales"}, r) == 15
    assert profile_fit({"job_title": "VP of Sales", "seniority": "manager"}, r) == 8
    assert profile_fit({"job_title": "Head of IT, Director"}, r) == 12


@pytest.mark.parametrize(
    ("title", "points"),
    [
        ("Vice President of Sales", 15),  # a VP: "president" inside "vice president" is no president
        ("Senior Vice President, Marketing", 15),
        ("President", 20),
        ("President and CEO", 20),
        ("Vice President & CTO", 20),  # a keyword of its own still counts
    ],
)
def test_a_title_keyword_inside_a_longer_matching_keyword_does_not_count(title: str, points: int) -> None:
    assert profile_fit({"job_title": title}, load_rules()) == points


@pytest.mark.parametrize(
    ("title", "points"),
    [
        # the keyword names the person supported: these scored 20 (president, CEO, 社長) or 12 (director)
        ("Assistant to the President", 2),
        ("Executive Assistant to the CEO", 2),
        ("社長補佐", 2),  # assistant to the president
        ("社長秘書", 2),  # the president's secretary
        ("Secretary to the Director", 2),
        ("Assistant to the Vice President", 2),
        ("PA to the CEO", 2),
        ("Marketing Intern, Office of the CEO", 2),
        ("執行役員補佐", 2),  # assistant to an executive officer
        ("Executive Assistant", 2),  # a support role naming nobody: the same staff level (0 before)
        ("CEO's Assistant", 2),  # possessives: the owner's name ends where the keyword begins
        ("President\u2019s Secretary", 2),  # typographic apostrophe
        ("Vice President's Assistant", 2),
        # not support roles: every other title keeps its score
        ("President", 20),
        ("Vice President of Sales", 15),  # the containment rule still holds
        ("取締役副社長", 15),
        ("代表取締役社長", 20),
        ("Assistant Manager", 8),  # assistant ranks are ranks, not assistants to someone
        ("Assistant Vice President", 15),
        ("Assistant Director of Marketing", 12),
        ("課長補佐", 8),  # assistant section chief: a rank below 課長
        ("部長補佐", 12),
        ("アシスタントマネージャー", 8),
        ("Director and Company Secretary", 12),  # a board officer, not a secretary to someone
        ("International Sales Director", 12),  # intern matches whole words only
        ("Internal Audit Manager", 8),
    ],
)
def test_a_support_title_scores_as_staff_not_as_the_person_it_supports(title: str, points: int) -> None:
    """ "Assistant to the President" matched the keyword president and scored as the president (20), so an
    assistant looked like the decision maker. The shipped fit.support_roles makes it staff (2)."""
    assert profile_fit({"job_title": title}, load_rules()) == points


@pytest.mark.parametrize(
    ("title", "points"),
    [
        ("インターンシップ担当部長", 12),  # director in charge of internships: a 部長
        ("インターンシップ推進課長", 8),  # section manager promoting internships: a 課長
        ("Internship Program Director", 12),  # the English twin, kept apart by the word boundary
        ("インターンシップ生", 2),  # an internship student is an intern
        ("インターン", 2),
        ("長期インターン", 2),
    ],
)
def test_a_title_about_internships_is_not_an_intern(title: str, points: int) -> None:
    """Kana do not end a word, so the shipped support keyword インターン (intern) matched inside
    インターンシップ (internship) and scored the director in charge of internships as an intern (2), where
    "Internship Program Director" is 12: ``intern`` needs a word boundary that "internship" lacks."""
    assert profile_fit({"job_title": title}, load_rules()) == points


@pytest.mark.parametrize(
    ("title", "points"),
    [
        # they run or staff the intern program: these scored 2 (intern) under the shipped rules
        ("Intern Program Manager", 8),
        ("Director of Intern Programs", 12),
        ("Head of Intern Programmes", 12),
        ("Intern Recruitment Manager", 8),
        ("インターン採用担当部長", 12),  # director in charge of intern recruiting
        ("インターン担当課長", 8),  # section manager in charge of interns
        # the board's officer, scored like "Company Secretary" (by its other keywords), was 2
        ("Secretary to the Board", 0),
        ("Director and Secretary to the Board", 12),
        ("VP, General Counsel and Secretary to the Board", 15),
        ("Secretary to the Board of Directors", 0),
        # still support roles: the keyword outside every exception
        ("Marketing Intern", 2),
        ("Intern, Intern Program", 2),
        ("営業インターン", 2),
        ("Secretary to the Director", 2),
        ("Secretary to the Board Chair", 2),  # the chair's secretary: a longer support keyword
        ("Executive Secretary to the Board Chairman", 2),
        # already right: intern is a whole word, so "internship(s)" never matched it
        ("Head of Internships", 12),
        ("Internship Coordinator", 0),
    ],
)
def test_a_support_keyword_inside_a_shipped_exception_is_the_leads_own_job(title: str, points: int) -> None:
    """fit.support_roles.exceptions: "Intern Program Manager" manages the intern program and "Secretary to
    the Board" is a board officer, but the support keywords intern and "secretary to" scored both as staff
    (2), also when the title named a director or a VP."""
    assert profile_fit({"job_title": title}, load_rules()) == points


def test_support_role_exceptions_from_a_custom_rules_file() -> None:
    """Any phrases; without the key (optional) the keyword is a support role wherever it stands."""
    fit = {"title_keywords": {"manager": 8}, "support_roles": {"points": 1, "keywords": ["trainee"]}}
    assert profile_fit({"job_title": "Trainee Scheme Manager"}, rules(fit=fit)) == 1
    fit["support_roles"] = {"points": 1, "keywords": ["trainee"], "exceptions": ["trainee scheme"]}
    excepting = rules(fit=fit)
    assert profile_fit({"job_title": "Trainee Scheme Manager"}, excepting) == 8
    assert profile_fit({"job_title": "Sales Trainee"}, excepting) == 1


def test_the_seniority_field_still_wins_over_a_support_title() -> None:
    shipped = load_rules()
    assert profile_fit({"job_title": "Assistant to the President", "seniority": "manager"}, shipped) == 8
    assert profile_fit({"job_title": "社長秘書", "seniority": "staff"}, shipped) == 2


CUSTOM_FIT = """\
version: 1
fit:
  title_keywords:
    director: 12
    部長: 12
    assistant manager: 6
  support_roles:
    points: -1
    keywords: [assistant, 補佐]
"""


def test_support_roles_from_a_custom_rules_file(tmp_path: Path) -> None:
    """Any keywords and points; a support keyword inside a longer matching title keyword does not count, as
    president inside vice president does not: a file can list broad keywords and keep the ranks it wants."""
    path = tmp_path / "rules.yaml"
    path.write_text(CUSTOM_FIT, encoding="utf-8")
    custom = load_rules(path)
    assert profile_fit({"job_title": "Director's Assistant"}, custom) == -1
    assert profile_fit({"job_title": "部長補佐"}, custom) == -1
    assert profile_fit({"job_title": "ASSISTANT to the director"}, custom) == -1
    assert profile_fit({"job_title": "Assistant Manager"}, custom) == 6  # a rank this file keeps
    assert profile_fit({"job_title": "Sales Director"}, custom) == 12
    # a file without the section has no support roles: the title scores its keywords as before
    path.write_text(CUSTOM_FIT.split("  support_roles:")[0], encoding="utf-8")
    assert profile_fit({"job_title": "Director's Assistant"}, load_rules(path)) == 12


def test_the_worker_step_and_rescore_score_a_support_title_with_the_same_fit() -> None:
    """One fit function: the worker and rescore both run agents.core.step, whose profile fit is
    scoring.profile_fit; a rules change to support roles shows in a rescore of stored history."""
    assert worker.step is core.step and rescore_module.step is core.step
    history = [identified(lead="L1", t=T0, job_title="Assistant to the President", country="JP")]
    lead = Lead()
    lead.send(*history)
    assert lead.state().fit == 2 + 10
    without = rules(fit={"support_roles": None})
    assert replay(history, without, T0)["L1"].fit == 20 + 10
    assert replay(history, rules(), T0)["L1"].fit == 2 + 10


def test_fit_never_decays() -> None:
    lead = Lead()
    lead.send(identified(t=T0, company_size=6000, seniority="c_level"))
    lead.send(visit(t=T0 + 300 * DAY, category="blog"))
    assert lead.state().fit == 40
    assert lead.score() == pytest.approx(40 + 1)


# --- decay ----------------------------------------------------------------------------------------


def test_behaviour_decays_with_the_rules_half_life_on_event_time() -> None:
    lead = Lead()
    lead.send(visit(t=T0, category="pricing"))  # 10 points, half-life 14 days
    lead.send(visit(t=T0 + 10 * DAY, category="blog"))  # 1 point, default 30 days; moves as_of by 10 days
    expected = closed_form(10, 10 * DAY, 14) + 1
    assert lead.score() == pytest.approx(expected, abs=1e-9)
    record = lead.of("lead_score")[-1]
    assert record["behaviour"] == pytest.approx(expected, abs=1e-9)
    assert record["previous_score"] == pytest.approx(closed_form(10, 10 * DAY, 14), abs=1e-9)


@pytest.mark.parametrize(
    ("event", "points", "half_life"),
    [
        (lambda t: visit(t=t, category="pricing"), 10, 14),
        (lambda t: download(t=t, asset="whitepaper"), 15, 60),
        (lambda t: view(t=t, content_type="webinar"), 15, 30),
        (lambda t: click(t=t), 5, 30),
    ],
)
def test_each_rule_decays_with_its_own_half_life(event: Any, points: float, half_life: float) -> None:
    lead = Lead()
    lead.send(event(T0))
    lead.send(identified(t=T0 + 45 * DAY))  # advances the as-of time, adds no points
    assert lead.score() == pytest.approx(closed_form(points, 45 * DAY, half_life), abs=1e-9)


def test_demo_request_decays_over_ninety_days() -> None:
    lead = Lead()
    lead.send(download(t=T0, asset="demo_request"), identified(t=T0 + 90 * DAY))
    assert lead.score() == pytest.approx(25.0, abs=1e-9)


def test_out_of_order_event_is_scored_at_its_own_event_time() -> None:
    lead = Lead()
    lead.send(visit(t=T0 + 20 * DAY, category="blog"))
    lead.send(visit(t=T0 + 6 * DAY, category="pricing"))  # arrives later, happened earlier
    assert lead.score() == pytest.approx(1 + closed_form(10, 14 * DAY, 14), abs=1e-9)


def test_in_order_and_reversed_order_give_the_same_score() -> None:
    events = [
        visit(t=T0 + i * 7 * HOUR, category=c, event_id=f"e{i}")
        for i, c in enumerate(["pricing", "product", "blog", "careers", "pricing", "case_study"])
    ] + [download(t=T0 + 3 * DAY, asset="whitepaper", event_id="d"), click(t=T0 + 2 * DAY, event_id="c")]
    forward, backward = Lead(), Lead()
    forward.send(*events)
    backward.send(*reversed(events))
    assert forward.score() == pytest.approx(backward.score(), abs=1e-9)


# --- caps, negatives, duplicates ------------------------------------------------------------------


def test_daily_cap_limits_scored_events_per_rule_per_utc_day() -> None:
    lead = Lead()
    lead.send(*[visit(t=T0 + i * MIN, category="pricing") for i in range(3)])  # cap 3
    capped = lead.send(*[visit(t=T0 + (3 + i) * MIN, category="pricing") for i in range(2)])
    assert lead.score() == pytest.approx(sum(closed_form(10, (4 - i) * MIN, 14) for i in range(3)), abs=1e-9)
    assert capped == []  # decay over two minutes is below the reporting threshold: no lead_score flood


def test_capped_event_that_moves_the_score_says_it_was_capped() -> None:
    lead = Lead()
    lead.send(*[visit(t=T0 + i * MIN, category="pricing") for i in range(3)])
    lead.send(visit(t=T0 + 20 * HOUR, category="pricing", event_id="late-in-day"))
    assert (
        "page_category.pricing capped at 3/day (event late-in-day)"
        in lead.of("lead_score")[-1]["change_reason"]
    )


def test_cap_resets_on_the_next_utc_day() -> None:
    lead = Lead()
    lead.send(*[visit(t=T0 + 23 * HOUR + i * MIN, category="pricing") for i in range(4)])
    lead.send(visit(t=T0 + DAY + MIN, category="pricing"))
    assert len(lead.state().caps) == 2
    behaviour = sum(closed_form(10, DAY + MIN - (23 * HOUR + i * MIN), 14) for i in range(3)) + 10
    assert lead.score() == pytest.approx(behaviour, abs=1e-9)


def test_cap_keeps_the_earliest_events_of_the_day_whatever_the_arrival_order() -> None:
    events = [visit(t=T0 + i * HOUR, category="pricing", event_id=f"p{i}") for i in range(5)]
    in_order, shuffled = Lead(), Lead()
    in_order.send(*events)
    shuffled.send(events[4], events[3], events[0], events[2], events[1])
    assert shuffled.score() == pytest.approx(in_order.score(), abs=1e-9)
    assert [e for _, e in shuffled.state().caps["page_category.pricing|" + str(T0 // DAY)]] == [
        "p0",
        "p1",
        "p2",
    ]


# --- page views: the tracker reports one view of an element in parts (each time the page is hidden) -----


def test_the_reports_of_one_page_view_score_the_item_once() -> None:
    lead = Lead()
    lead.send(*[view(t=T0 + t, content_type="case_study", page_view="pv1") for t in (0, MIN, 2 * HOUR)])
    assert lead.score() == pytest.approx(closed_form(10, 2 * HOUR, 30), abs=1e-9)  # not 3 x 10 (cap 3)
    assert len(lead.state().signals) == 1
    # two hours of decay move the score: the record says why the report added nothing
    [record] = [o.record for o in lead.results[-1].outputs if o.schema == "lead_score"]
    assert "case_study not scored: page view pv1 scored already" in record["change_reason"]


def test_reports_without_a_page_view_id_score_each_as_before() -> None:
    lead = Lead()
    lead.send(*[view(t=T0 + i * MIN, content_type="case_study") for i in range(2)])
    assert lead.score() == pytest.approx(closed_form(10, MIN, 30) + 10, abs=1e-9)


@pytest.mark.parametrize(
    ("second", "scores"),
    [
        (view(t=T0 + MIN, content_type="case_study", page_view="pv2"), 2),  # the next page load
        (view(t=T0 + MIN, content_type="case_study", page_view="pv1", content_id="cs-2"), 2),  # another item
        (view(t=T0 + MIN, content_type="case_study", page_view="pv1"), 1),
    ],
)
def test_a_page_view_is_one_item_on_one_page_load(second: tuple[str, dict[str, Any]], scores: int) -> None:
    lead = Lead()
    lead.send(view(t=T0, content_type="case_study", page_view="pv1"), second)
    assert len(lead.state().signals) == scores


def test_a_page_view_reported_before_and_after_the_visitor_identified_scores_once() -> None:
    lead = Lead()
    lead.send(
        view(lead=None, anon="A1", t=T0, content_type="case_study", page_view="pv1"),
        identified("L1", T0 + MIN, anon="A1"),
        view(lead="L1", anon="A1", t=T0 + 2 * MIN, content_type="case_study", page_view="pv1"),
    )
    assert len(lead.state().signals) == 1
    assert lead.score() == pytest.approx(closed_form(10, 2 * MIN, 30), abs=1e-9)


def test_a_page_view_id_cannot_pass_for_an_event_id() -> None:
    """Views are remembered apart from the event ids: an event whose id is the page view's id still scores."""
    lead = Lead()
    lead.send(view(t=T0, content_type="case_study", page_view="pv1"))
    lead.send(download(t=T0 + MIN, asset="whitepaper", event_id="pv1"))
    assert lead.score() == pytest.approx(closed_form(10, MIN, 30) + 15, abs=1e-9)


SMALL_STATE = {"state": {"max_seen_ids": 10}}


def test_a_view_is_not_forgotten_for_the_event_ids_that_came_after_its_first_report() -> None:
    """Review finding: with the view kept among the seen ids, the count bound dropped it and the reading's
    next report, newer than every evicted id, scored again."""
    lead = Lead(rules(**SMALL_STATE))
    lead.send(view(t=T0, content_type="case_study", page_view="pv1"))
    lead.send(*[visit(t=T0 + (1 + i) * MIN, category="blog") for i in range(13)])
    lead.send(view(t=T0 + 20 * MIN, content_type="case_study", page_view="pv1"))
    assert [s[0] for s in lead.state().signals].count("content_type.case_study") == 1
    assert lead.state().acc["content_type.case_study"][0] == pytest.approx(10)


def test_a_view_outlives_the_seen_ids_evicted_after_it_when_the_day_turns() -> None:
    """Views leave with the dedup window after their last report, not with the seen ids' eviction floor (a
    busy lead's floor is recent: the view would be forgotten at the next day and its next report score)."""
    lead = Lead(rules(**SMALL_STATE))
    lead.send(view(t=T0, content_type="case_study", page_view="pv1"))
    lead.send(*[visit(t=T0 + (1 + i) * MIN, category="blog") for i in range(14)])
    assert lead.state().evicted_to > T0  # the count bound evicted ids newer than the view
    lead.send(visit(t=T0 + DAY, category="blog"))  # a new day: the window is pruned
    lead.send(view(t=T0 + DAY + MIN, content_type="case_study", page_view="pv1"))
    assert [s[0] for s in lead.state().signals].count("content_type.case_study") == 1


def test_page_views_take_no_room_from_the_event_ids() -> None:
    """Review finding: a view per report halved the event ids kept, so late events went stale sooner."""
    with_views, without = Lead(rules(**SMALL_STATE)), Lead(rules(**SMALL_STATE))
    for i in range(30):
        with_views.send(view(t=T0 + i * MIN, event_id=f"v{i}", page_view=f"pv{i}"))
        without.send(view(t=T0 + i * MIN, event_id=f"v{i}"))
    assert with_views.state().seen == without.state().seen
    assert with_views.state().evicted_to == without.state().evicted_to


def test_page_views_are_bounded_keeping_the_most_recently_reported() -> None:
    lead = Lead(rules(**SMALL_STATE))
    lead.send(view(t=T0, page_view="kept"))
    for i in range(30):
        lead.send(view(t=T0 + (1 + i) * MIN, page_view=f"pv{i}"))
        lead.send(view(t=T0 + (1 + i) * MIN + 1, page_view="kept"))  # still being reported
    views = lead.state().views
    assert len(views) <= 10 + 10 // 4
    assert any(key.startswith("kept\x1f") for key in views)
    assert not any(key.startswith("pv0\x1f") for key in views)


def test_page_views_leave_with_the_dedup_window_and_survive_a_state_round_trip() -> None:
    lead = Lead()
    lead.send(view(t=T0, page_view="old"))
    lead.send(view(t=T0 + 29 * DAY, page_view="recent"))
    assert len(lead.state().views) == 2
    restored = LeadState.from_bytes(lead.state().to_bytes())
    assert restored.views == lead.state().views
    lead.send(visit(t=T0 + 31 * DAY))  # a new day: the window (30 days) moves past the first view
    assert [key.split("\x1f")[0] for key in lead.state().views] == ["recent"]


@pytest.mark.parametrize(
    ("event", "points"),
    [
        (visit(t=T0, category="careers"), -10),
        (click(t=T0, link="https://mail.example/unsubscribe?id=1"), -25),
        (click(t=T0, link="bounce://hard/550"), -15),
    ],
)
def test_negative_signals_lower_the_score(event: tuple[str, dict[str, Any]], points: float) -> None:
    lead = Lead()
    lead.send(event)
    assert lead.score() == pytest.approx(points)
    assert lead.of("lead_score")[-1]["behaviour"] == pytest.approx(points)


def test_duplicate_event_id_never_scores_twice() -> None:
    lead = Lead()
    event = download(t=T0, asset="whitepaper", event_id="dup")
    lead.send(event)
    outputs = lead.send(event, download(t=T0 + 5 * DAY, asset="whitepaper", event_id="dup"))
    assert outputs == []
    assert lead.results[-1].dropped == "duplicate" and not lead.results[-1].changed
    assert lead.score() == pytest.approx(15)


def test_event_older_than_the_dedup_window_is_not_scored() -> None:
    lead = Lead()
    lead.send(visit(t=T0 + 40 * DAY, category="blog"))
    lead.send(visit(t=T0, category="pricing"))
    assert lead.results[-1].dropped == "stale"
    assert lead.score() == pytest.approx(1)


def test_seen_ids_are_bounded_and_evicted_ids_cannot_score_again() -> None:
    r = rules(state={"max_seen_ids": 10})
    lead = Lead(r)
    events = [visit(t=T0 + i * MIN, category="blog", event_id=f"b{i}") for i in range(40)]
    lead.send(*events)
    state = lead.state()
    assert len(state.seen) <= 10 + 10 // 4
    before = lead.score()
    lead.send(events[0])  # evicted id: below the eviction floor, so dropped as stale
    assert lead.results[-1].dropped == "stale"
    assert lead.score() == before


def test_seen_ids_older_than_the_window_are_forgotten_as_the_window_slides() -> None:
    lead = Lead()  # default window 30 days, max_seen_ids 2000: far more than these events
    events = [visit(t=T0 + i * DAY, category="blog", event_id=f"d{i}") for i in range(60)]
    lead.send(*events)
    kept = lead.state().seen
    assert set(kept) == {f"d{i}" for i in range(29, 60)}  # the 30-day window behind the newest (day 59)
    before = lead.score()
    lead.send(events[0])  # forgotten, and below the floor: stale, cannot score twice
    assert lead.results[-1].dropped == "stale"
    assert lead.score() == before


# --- late events, disqualification ----------------------------------------------------------------


def test_late_event_is_scored_but_fires_no_hot_lead() -> None:
    lead = Lead()
    lead.send(identified(t=T0 + 10 * DAY, company_size=6000, seniority="c_level", country="JP"))  # fit 50
    lead.send(download(t=T0 + 5 * DAY, asset="whitepaper"), download(t=T0 + 5 * DAY, asset="ebook"))
    lead.send(view(t=T0 + 5 * DAY, content_type="webinar"), view(t=T0 + 5 * DAY, content_type="case_study"))
    assert lead.state().stage == "mql"
    assert lead.score() > 100
    assert lead.of("hot_lead") == []
    assert "late event" in lead.of("lead_score")[-1]["change_reason"]
    assert "hot_lead_follow_up" not in lead.state().timers


def test_event_within_the_late_window_still_fires_a_hot_lead() -> None:
    lead = Lead()
    lead.send(identified(t=T0 + 2 * DAY))
    lead.send(download(t=T0, asset="demo_request"))
    assert len(lead.of("hot_lead")) == 1


def test_an_old_first_event_notifies_unless_lateness_is_measured_from_arrival() -> None:
    """The documented default: a lead's first event is never late against the lead's own clock."""
    by_lead, by_arrival = Lead(), Lead(rules(late_by_arrival=True))
    for lead in (by_lead, by_arrival):
        lead.send(download(t=T0, asset="demo_request"), received=T0 + 5 * DAY)
    assert by_lead.state().stage == by_arrival.state().stage == "mql"
    assert len(by_lead.of("hot_lead")) == 1
    assert "hot_lead_follow_up" in by_lead.state().timers
    assert by_arrival.of("hot_lead") == []
    assert "hot_lead_follow_up" not in by_arrival.state().timers
    assert "late event" in by_arrival.of("lead_score")[-1]["change_reason"]


@pytest.mark.parametrize(
    ("received", "hot"),
    [(None, 1), (T0, 1), (T0 + 3 * DAY - 1, 1), (T0 + 3 * DAY, 1), (T0 + 3 * DAY + 1, 0)],
)
def test_arrival_lateness_starts_after_the_late_window(received: int | None, hot: int) -> None:
    lead = Lead(rules(late_by_arrival=True))
    lead.send(download(t=T0, asset="demo_request"), received=received)
    assert len(lead.of("hot_lead")) == hot


def test_a_late_arrival_still_scores_and_a_timely_one_then_notifies() -> None:
    """A backfilled history lands in the score; the next live event that crosses the threshold notifies."""
    lead = Lead(rules(late_by_arrival=True))
    now = T0 + 10 * DAY
    lead.send(identified(t=T0, company_size=6000, seniority="c_level", country="JP"), received=now)
    lead.send(download(t=T0 + DAY, asset="whitepaper"), received=now)
    backfilled = lead.score()
    assert backfilled > 50 and lead.state().stage != "mql"
    lead.send(download(t=now, asset="demo_request"), received=now)
    assert [h["lead_id"] for h in lead.of("hot_lead")] == ["L1"]


@pytest.mark.parametrize(
    ("profile", "reason"),
    [
        ({"flags": ["student"]}, "flag:student"),
        ({"flags": ["competitor"]}, "flag:competitor"),
        ({"email": "ann@lab.u-tokyo.ac.jp"}, "email_domain:lab.u-tokyo.ac.jp"),
        ({"email": "bob@cs.stanford.edu"}, "email_domain:cs.stanford.edu"),
        ({"email": "eve@sales.competitor.example"}, "email_domain:sales.competitor.example"),
        ({"job_title": "Graduate Student"}, "job_title:Graduate Student"),
        ({"job_title": "Retired engineer"}, "job_title:Retired engineer"),
    ],
)
def test_disqualification_by_flag_domain_or_title(profile: dict[str, Any], reason: str) -> None:
    assert disqualification(profile, rules()) == reason


def test_title_keywords_match_whole_words_only() -> None:
    assert disqualification({"job_title": "Studentship coordinator"}, rules()) is None
    assert disqualification({"email": "a@edu.example.com"}, rules()) is None


@pytest.mark.parametrize(
    ("title", "fit", "reason"),
    [
        ("営業部長", 12, None),  # sales director: no space between 営業 (sales) and 部長 (director)
        ("代表取締役社長", 20, None),  # representative director and president (CEO)
        ("情報システム部 課長", 8, None),
        ("CEO兼社長", 20, None),
        ("経済学部 大学生", 0, "job_title:経済学部 大学生"),  # a university student
        ("Studentship coordinator", 0, None),  # Latin script keeps whole words
    ],
)
def test_title_keywords_match_inside_japanese_titles_which_have_no_spaces(
    title: str, fit: int, reason: str | None
) -> None:
    r = rules(
        fit={"title_keywords": {"部長": 12, "社長": 20, "課長": 8, "ceo": 20}},
        disqualify={"title_keywords": ["student", "学生"]},
    )
    assert profile_fit({"job_title": title}, r) == fit
    assert disqualification({"job_title": title}, r) == reason


@pytest.mark.parametrize(
    ("title", "fit", "reason"),
    [
        ("代表取締役社長", 20, None),  # CEO: the highest of 代表取締役 and 社長
        ("取締役副社長", 15, None),  # 社長 inside 副社長 does not count
        ("営業本部長", 15, None),  # 部長 inside 本部長 does not count
        ("営業部長", 12, None),
        ("マーケティング部 課長", 8, None),
        ("大学生", 0, "job_title:大学生"),
        ("退職者", 0, "job_title:退職者"),
        ("Vice President of Sales", 15, None),
    ],
)
def test_the_shipped_rules_score_japanese_titles_like_their_english_equivalents(
    title: str, fit: int, reason: str | None
) -> None:
    """The defaults give Japan +10 but had English title keywords only: a 部長 scored no seniority."""
    shipped = load_rules()
    assert profile_fit({"job_title": title}, shipped) == fit
    assert disqualification({"job_title": title}, shipped) == reason


@pytest.mark.parametrize(
    ("title", "fit", "reason"),
    [
        ("Student Recruitment Manager", 8, None),  # hires students: a buyer of recruiting tools
        ("学生採用担当部長", 12, None),  # director in charge of student recruiting
        ("新卒・学生採用 課長", 8, None),
        ("学生向けサービス企画 部長", 12, None),  # plans services for students
        ("Head of Student Success", 12, None),
        ("Student Loan Officer", 0, None),
        ("Graduate Student", 0, "job_title:Graduate Student"),
        ("経済学部 大学生", 0, "job_title:経済学部 大学生"),
        ("Student, student recruiting", 0, "job_title:Student, student recruiting"),  # a student outside it
        ("Retired CEO", 20, "job_title:Retired CEO"),
    ],
)
def test_a_title_keyword_inside_a_shipped_exception_phrase_does_not_disqualify(
    title: str, fit: int, reason: str | None
) -> None:
    """学生 is matched inside longer Japanese words (大学生 is a student) and "student" is a whole word in
    "Student Recruitment Manager": both disqualified the people who hire students, HR buyers."""
    shipped = load_rules()
    assert profile_fit({"job_title": title}, shipped) == fit
    assert disqualification({"job_title": title}, shipped) == reason


def test_a_title_exception_that_contains_no_title_keyword_is_refused_naming_it() -> None:
    disqualify = {"title_keywords": ["student"], "title_exceptions": ["student loan", "graduate programme"]}
    with pytest.raises(RulesError, match=r"disqualify\.title_exceptions\[1\]: 'graduate programme' contains"):
        rules_from_mapping({"disqualify": disqualify})
    with pytest.raises(RulesError, match=r"disqualify\.title_exceptions\[0\]: ' student loan' is blank or"):
        rules_from_mapping(
            {"disqualify": {"title_keywords": ["student"], "title_exceptions": [" student loan"]}}
        )


def test_a_title_exception_holding_a_keyword_only_inside_a_longer_word_is_refused() -> None:
    """Titles are matched by whole words, so "studentship office" never excepts the keyword student: it
    passed the start-up check, which looked for the letters anywhere, and silently did nothing."""
    disqualify = {"title_keywords": ["student"], "title_exceptions": ["studentship office"]}
    with pytest.raises(RulesError, match=r"title_exceptions\[0\]: 'studentship office' contains none"):
        rules_from_mapping({"disqualify": disqualify})
    assert disqualification({"job_title": "Studentship Office Lead"}, load_rules()) is None
    rules_from_mapping({"disqualify": {"title_keywords": ["学生"], "title_exceptions": ["学生採用"]}})


def test_disqualified_lead_is_scored_but_never_hot() -> None:
    lead = Lead()
    lead.send(identified(flags=["student"]))
    lead.send(
        download(t=T0 + MIN, asset="demo_request"),
        *[view(t=T0 + i, content_type="webinar") for i in range(2)],
    )
    assert lead.state().stage == "disqualified"
    assert lead.score() > 50
    assert lead.of("hot_lead") == []
    assert lead.of("lead_score")[-1]["stage"] == "disqualified"


# --- outputs --------------------------------------------------------------------------------------


def test_score_change_says_why_with_rule_and_event() -> None:
    lead = Lead()
    lead.send(visit(t=T0, category="pricing", event_id="w-1"))
    record = lead.of("lead_score")[-1]
    assert record["change_reason"] == "page_category.pricing +10 (event w-1)"
    assert record["reasons"][0]["rule"] == "page_category.pricing"
    assert record["reasons"][0]["event_id"] == "w-1"
    assert record["trigger_event_id"] == "w-1"


def test_reasons_are_the_largest_current_contributions_first() -> None:
    lead = Lead()
    lead.send(visit(t=T0, category="blog"), download(t=T0 + 1, asset="whitepaper"), click(t=T0 + 2))
    reasons = lead.of("lead_score")[-1]["reasons"]
    assert [r["rule"] for r in reasons] == [
        "asset_type.whitepaper",
        "event_type.email_click",
        "page_category.blog",
    ]
    assert reasons[0]["current_points"] <= reasons[0]["points"]


def test_no_lead_score_when_nothing_changes() -> None:
    lead = Lead()
    lead.send(visit(t=T0, category="support"))  # 0 points
    outputs = lead.send(visit(t=T0, category="support"))
    assert [o.schema for o in outputs] == []


@pytest.mark.parametrize(("score", "expected"), [(10, "cold"), (50, "warm"), (100, "warm"), (100.01, "hot")])
def test_bands_hot_means_strictly_above_the_threshold(score: float, expected: str) -> None:
    assert band(score, rules()) == expected


def test_every_output_of_a_full_journey_validates_against_its_schema() -> None:
    lead = Lead()
    lead.send(
        identified(company_size=500, seniority="vp", email="a@acme.example", company_domain="acme.example")
    )
    lead.send(
        visit(t=T0 + MIN, category="pricing"),
        click(t=T0 + 2 * MIN),
        download(t=T0 + 3 * MIN, asset="catalog"),
    )
    lead.send(activity("accepted", t=T0 + HOUR), activity("opportunity_created", t=T0 + DAY))
    lead.send(activity("closed_won", t=T0 + 2 * DAY), activity("upsell_opened", t=T0 + 30 * DAY))
    lead.tick(T0 + 400 * DAY)
    assert {o.schema for o in lead.outputs} == {"lead_score", "stage_transition", "hot_lead", "sla_timeout"}
    # accepted 57 min into the catalog's 1 h follow-up: past the half-time warning, before the breach
    assert [(t["sla"], t["level"]) for t in lead.of("sla_timeout")] == [("hot_lead_follow_up", "warning")]
    assert_valid(lead)
    assert lead.of("lead_score")[0]["account_domain"] == "acme.example"


def test_step_creates_state_for_a_new_key() -> None:
    schema, event = visit(lead="L9", t=T0)
    result = step(None, "L9", schema, event, rules(), now_ms=T0 + 5)
    assert result.state.lead_id == "L9"
    assert result.outputs[0].record["computed_at"] == T0 + 5


# --- account roll-up ------------------------------------------------------------------------------


def test_account_score_is_the_sum_of_the_latest_lead_scores() -> None:
    account = new_account("WWW.Acme.Example.")
    account = apply_lead_score(account, "L1", 40.0, T0)
    account = apply_lead_score(account, "L2", 30.0, T0)
    account = apply_lead_score(account, "L1", 55.0, T0 + 1)
    assert account.domain == "acme.example"
    assert account.score == pytest.approx(85.0)
    assert account.top_leads() == [("L1", 55.0), ("L2", 30.0)]


def test_older_lead_score_does_not_roll_the_account_back() -> None:
    account = apply_lead_score(new_account("acme.example"), "L1", 55.0, T0 + 10)
    account = apply_lead_score(account, "L1", 10.0, T0)
    assert account.score == 55.0


def test_account_state_round_trips() -> None:
    account = apply_lead_score(new_account("acme.example"), "L1", 55.0, T0)
    assert AccountState.from_dict(account.to_dict()) == account


def _score_record(lead: str, score: float, as_of: int, domain: str | None, stage: str = "lead") -> dict:
    return {"lead_id": lead, "score": score, "as_of": as_of, "account_domain": domain, "stage": stage}


def test_folding_lead_scores_builds_the_account_and_emits_its_record() -> None:
    account = fold_lead_score(None, _score_record("L1", 40.0, T0, "www.Acme.example"))
    account = fold_lead_score(account, _score_record("L2", 70.0, T0 + 5, "acme.example"))
    assert account is not None and account.domain == "acme.example"
    record = account_score_record(account, computed_at=T0 + 9)
    assert record == {
        "domain": "acme.example",
        "score": pytest.approx(110.0),
        "leads": 2,
        "top_leads": [{"lead_id": "L2", "score": 70.0}, {"lead_id": "L1", "score": 40.0}],
        "as_of": T0 + 5,
        "computed_at": T0 + 9,
    }
    registry_check = default_registry().encode("account_score", record)  # valid against the schema
    assert default_registry().decode(registry_check)[1]["leads"] == 2


def test_a_disqualified_lead_counts_zero_and_a_lead_without_domain_is_no_account() -> None:
    account = fold_lead_score(None, _score_record("L1", 40.0, T0, "acme.example"))
    account = fold_lead_score(
        account, _score_record("L1", 90.0, T0 + 1, "acme.example", stage="disqualified")
    )
    assert account is not None and account.score == 0.0
    assert fold_lead_score(None, _score_record("L3", 50.0, T0, None)) is None


def test_an_account_forgets_leads_not_scored_within_its_window() -> None:
    account = fold_lead_score(None, _score_record("L1", 40.0, T0, "acme.example"))
    account = fold_lead_score(account, _score_record("L2", 20.0, T0 + 29 * DAY, "acme.example"))
    assert account is not None and account.score == pytest.approx(60.0)  # both within 30 days
    account = fold_lead_score(account, _score_record("L2", 25.0, T0 + 31 * DAY, "acme.example"))
    assert account is not None and set(account.leads) == {"L2"} and account.score == 25.0
    # a score older than the window is ignored: the account does not change
    assert fold_lead_score(account, _score_record("L3", 90.0, T0, "acme.example")) is account


def test_account_window_keeps_the_same_leads_whatever_the_arrival_order() -> None:
    records = [
        _score_record(f"L{i % 7}", float(i), T0 + i * 3 * DAY + i % 5, "acme.example") for i in range(30)
    ]
    records.append(_score_record("OLD", 99.0, T0, "acme.example"))  # 87 days behind the newest score
    # by hand: the newest score is i=29 at day 87; each lead's latest record (i = 23..29, days 69..87) is
    # inside the 30-day window and OLD is not
    expected = {f"L{i % 7}": (float(i), T0 + i * 3 * DAY + i % 5) for i in range(23, 30)}
    for seed in range(20):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        account = None
        for record in shuffled:
            account = fold_lead_score(account, record)
        assert account is not None
        assert {lead: tuple(entry) for lead, entry in account.leads.items()} == expected, seed


def test_account_entries_stay_bounded_when_leads_move_between_domains() -> None:
    """Leads that change company domain left a stale entry in every account they had scored in (issue #8):
    50 leads moving weekly over 20 domains for 140 days reached 1,000 entries. Within the 30-day window a
    lead is in at most 6 accounts (6 distinct weeks)."""
    accounts: dict[str, AccountState | None] = {}
    for day in range(140):
        for lead in range(50):
            domain = f"d{(lead + day // 7) % 20}.example"
            record = _score_record(f"L{lead}", 10.0 + day, T0 + day * DAY + lead, domain)
            accounts[domain] = fold_lead_score(accounts.get(domain), record)
    entries = sum(len(a.leads) for a in accounts.values() if a is not None)
    assert entries <= 50 * 6, entries
    for account in accounts.values():
        assert account is not None
        newest = max(t for _, t in account.leads.values())
        assert all(t >= newest - 30 * DAY for _, t in account.leads.values())


def test_an_erased_lead_leaves_its_account() -> None:
    account = fold_lead_score(None, _score_record("L1", 40.0, T0, "acme.example"))
    account = fold_lead_score(account, _score_record("L2", 20.0, T0, "acme.example"))
    assert account is not None
    assert without_lead(account, "L1").score == 20.0 and "L1" not in without_lead(account, "L1").leads


def test_the_account_window_is_the_rules_state_account_window_days() -> None:
    rules = rules_from_mapping({"state": {"account_window_days": 2}})
    assert rules.account_window_ms == 2 * DAY and load_rules(None).account_window_ms == 30 * DAY
    account = fold_lead_score(None, _score_record("L1", 40.0, T0, "acme.example"), rules.account_window_ms)
    account = fold_lead_score(account, _score_record("L2", 20.0, T0 + 3 * DAY, "acme.example"), 2 * DAY)
    assert account is not None and set(account.leads) == {"L2"}  # L1 is 3 days behind: out of a 2-day window
    with pytest.raises(RulesError, match=r"state\.account_window_days: must be > 0"):
        rules_from_mapping({"state": {"account_window_days": 0}})
