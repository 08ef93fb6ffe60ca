"""Bounds on the rules file's numbers: every value the rules accept keeps the pure core's scores, deadlines
and outputs finite; the one that did not (a half-life of almost nothing) is refused naming key and floor."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agents.rules import Rules, RulesError, rules_from_mapping
from agents.rules_sections import MAX_DAYS, MAX_HOURS, MAX_POINTS, MIN_HALF_LIFE_DAYS
from schemas.registry import default_registry
from sinks.rows import Origin, to_row
from tests.unit.builders import DAY, HOUR, T0, Lead, activity, download, identified, rules, view, visit

pytestmark = pytest.mark.unit

RULE = ("scoring.page_category.blog.half_life_days", {"scoring": {"page_category": {"blog": {"points": 1}}}})
DEFAULT = ("scoring.default_half_life_days", {"scoring": {"page_category": {"blog": 1}}})


def with_half_life(where: tuple[str, dict[str, Any]], days: float) -> dict[str, Any]:
    path, mapping = where
    if path == DEFAULT[0]:
        return {"scoring": {**mapping["scoring"], "default_half_life_days": days}}
    return {"scoring": {"page_category": {"blog": {"points": 1, "half_life_days": days}}}}


@pytest.mark.parametrize("where", [RULE, DEFAULT], ids=["rule", "default"])
def test_a_half_life_so_short_that_the_score_was_nan_is_refused(where: tuple[str, dict[str, Any]]) -> None:
    """Before: 1e-320 days loaded; ln 2 / half-life overflowed to inf, and the visit at the lead's newest
    event time decayed by exp(-inf * 0) = NaN, so the lead's score was NaN from then on (and no lead_score
    said so: NaN compares unequal to everything)."""
    mapping = with_half_life(where, 1e-320)
    try:
        accepted = rules_from_mapping(mapping)
    except RulesError as exc:
        assert str(exc) == f"rules.yaml: {where[0]}: must be >= 0.0416667 (1 hour)"
        return
    lead = Lead(accepted)
    lead.send(identified(t=T0), visit(t=T0, category="blog"))
    pytest.fail(f"1e-320 days was accepted and the lead's score is {lead.score()}")


@pytest.mark.parametrize("where", [RULE, DEFAULT], ids=["rule", "default"])
@pytest.mark.parametrize("days", [1e-300, 0.01, 0.0416, 0, -0.0, -14])
def test_a_half_life_under_an_hour_is_refused_naming_the_key_and_the_floor(
    where: tuple[str, dict[str, Any]], days: float
) -> None:
    with pytest.raises(RulesError) as caught:
        rules_from_mapping(with_half_life(where, days))
    assert str(caught.value) == f"rules.yaml: {where[0]}: must be >= 0.0416667 (1 hour)"


@pytest.mark.parametrize("where", [RULE, DEFAULT], ids=["rule", "default"])
@pytest.mark.parametrize("days", [math.inf, -math.inf, math.nan])
def test_an_infinite_or_nan_half_life_is_refused_as_not_finite(
    where: tuple[str, dict[str, Any]], days: float
) -> None:
    with pytest.raises(RulesError) as caught:
        rules_from_mapping(with_half_life(where, days))
    assert str(caught.value) == f"rules.yaml: {where[0]}: must be a finite number"


def test_a_one_hour_half_life_halves_the_points_every_hour() -> None:
    lead = Lead(rules_from_mapping(with_half_life(RULE, MIN_HALF_LIFE_DAYS)))
    lead.send(identified(t=T0), visit(t=T0, category="blog"), visit(t=T0, category="blog", event_id="v2"))
    assert lead.score() == 2
    lead.send(visit(t=T0 + 3 * HOUR, category="other"))  # no rule: only moves the lead's clock
    assert lead.score() == pytest.approx(2 / 8, rel=1e-12)


# --- every accepted extreme keeps the core finite ---------------------------------------------------

TINY = 5e-324  # the smallest positive float
EXTREMES: list[tuple[str, dict[str, Any]]] = [
    ("shortest half-lives", {"scoring": {"default_half_life_days": MIN_HALF_LIFE_DAYS}}),
    ("longest half-lives (no decay)", {"scoring": {"default_half_life_days": 1e308}}),
    (
        "largest points",
        {
            "scoring": {
                "page_category": {"pricing": MAX_POINTS},
                "asset_type": {"demo_request": {"points": MAX_POINTS, "immediate_mql": True}},
            }
        },
    ),
    (
        "most negative points",
        {"scoring": {"page_category": {"pricing": -MAX_POINTS}, "asset_type": {"demo_request": -MAX_POINTS}}},
    ),
    (
        "huge daily cap",
        {
            "scoring": {
                "asset_type": {"demo_request": {"points": 50, "daily_cap": 10**400, "immediate_mql": True}}
            }
        },
    ),
    (
        "largest fit",
        {
            "fit": {
                "company_size": [{"min": 0, "points": MAX_POINTS}, {"min": 10**400, "points": -MAX_POINTS}],
                "industry": {"software": MAX_POINTS},
                "seniority": {"c_level": MAX_POINTS},
                "country": {"JP": MAX_POINTS},
            }
        },
    ),
    ("tiny threshold", {"stages": {"mql_threshold": TINY, "warm_from": 0}}),
    ("huge threshold", {"stages": {"mql_threshold": 1e308, "warm_from": 1e308}}),
    ("tiny follow-up clocks", {"sla": {"hot_lead_follow_up": {"hours": TINY, "immediate_hours": TINY}}}),
    (
        "longest follow-up clocks",
        {
            "sla": {"hot_lead_follow_up": {"hours": MAX_HOURS - 24, "immediate_hours": MAX_HOURS - 24}},
            "recycle": {"mql_not_accepted_days": MAX_DAYS},
        },
    ),
    ("tiny warning fraction", {"sla": {"warning_fraction": TINY}}),
    ("warning fraction just under 1", {"sla": {"warning_fraction": 1 - 2**-53}}),
    ("tiny rejection clock", {"sla": {"rejection_feedback_days": TINY}}),
    ("longest rejection clock", {"sla": {"rejection_feedback_days": MAX_DAYS}}),
    ("tiny windows", {"late_window_days": TINY, "state": {"dedup_window_days": TINY}}),
    ("longest windows", {"late_window_days": MAX_DAYS, "state": {"dedup_window_days": MAX_DAYS}}),
    ("tiny recycle clocks", {"recycle": {"mql_not_accepted_days": 2, "dormant_customer_days": TINY}}),
    (
        "longest recycle clocks",
        {"recycle": {"mql_not_accepted_days": MAX_DAYS, "dormant_customer_days": MAX_DAYS}},
    ),
    (
        "huge state limits",
        {"state": {s: 10**400 for s in ("max_seen_ids", "anonymous_buffer", "top_signals")}},
    ),
]


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _drive(rules_: Rules) -> Lead:
    """A hot lead, its follow-up clock fired, a rejection without a reason, a customer gone dormant."""
    lead = Lead(rules_)
    lead.send(identified(t=T0, company_size=6000, industry="software", seniority="c_level", country="JP"))
    for i in range(4):
        lead.send(visit(t=T0 + i, category="pricing"), download(t=T0 + i, asset="demo_request"))
    lead.send(view(t=T0 + 5, content_type="webinar"), visit(t=T0 - 2 * DAY, category="blog"))
    lead.tick(T0 + 2 * DAY)
    lead.send(activity("rejected", t=T0 + 2 * DAY))
    lead.send(activity("closed_won", t=T0 + 3 * DAY))
    lead.tick(T0 + 40_000 * DAY)
    return lead


@pytest.mark.parametrize(("name", "mapping"), EXTREMES, ids=[name for name, _ in EXTREMES])
def test_every_accepted_extreme_keeps_scores_deadlines_and_outputs_finite(
    name: str, mapping: dict[str, Any]
) -> None:
    """The scan behind the half-life floor: points, caps, thresholds, fractions, clocks and windows at the
    edges the rules accept. Durations and points were bounded before (1e300 days overflowed a deadline, 1e308
    points summed to inf); tiny clocks and windows are degenerate (a clock of 0 ms breaches at once) but
    finite, and huge whole numbers are only compared."""
    lead = _drive(rules(**mapping))  # the shipped rules with these sections' keys replaced
    assert math.isfinite(lead.score()), lead.score()
    registry = default_registry()
    for output in lead.outputs:
        assert _finite(output.record), (output.schema, output.record)
        registry.validate(output.schema, output.record)
        registry.encode(output.schema, output.record)


# --- sla.escalation: an empty level ---------------------------------------------------------------


def test_a_warning_routed_to_nobody_is_still_emitted_and_stored_with_no_recipients() -> None:
    """``warning: []`` is accepted on purpose: a team may want breaches paged and warnings only recorded.
    Nothing routes on ``notify`` (the notifier and the webhooks send hot leads), so the warning is emitted,
    valid and stored like any other, with an empty recipient list."""
    lead = Lead(rules(sla={"escalation": {"warning": []}}))
    lead.send(download(t=T0, asset="demo_request"))  # an immediate MQL: a 1 h follow-up clock
    lead.tick(T0 + 2 * HOUR)
    warning, breach = lead.of("sla_timeout")
    assert (warning["level"], warning["notify"]) == ("warning", [])
    assert (breach["level"], breach["notify"]) == ("breach", ["owner", "manager"])
    registry = default_registry()
    registry.validate("sla_timeout", warning)
    assert registry.decode(registry.encode("sla_timeout", warning), expect="sla_timeout")[1] == warning
    _, row = to_row("sla_timeout", warning, Origin("leads.sla_timeouts", 0, 0), b"key")
    assert row[8] == []  # the notify column
