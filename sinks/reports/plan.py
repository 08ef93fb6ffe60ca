"""The Model's reverse calculation: from a revenue target and an average deal size, how many wins,
opportunities, MQLs, leads and visitors the period needs, using conversion rates measured in ClickHouse
(or overridden with ``--rates``).

Worked example (reference/the-model-process): 10M target / 1M deal → 10 wins; 50% win rate → 20
opportunities (deals); 25% → 80 MQLs ("opportunities" in the book's wording); 10% → 800 leads; 5% →
16,000 visitors. Wins round up (you cannot close half a deal); every stage above is the exact quotient
of the wins by the product of the rates above them, rounded up only when shown. Rounding each step before
dividing again compounded: 1 win at 40/30/10/2% asked for 5,000 visitors where 4,167 give the win (2.5 → 3
opportunities, 8.3 → 10 MQLs, 83.3 → 100 leads).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

from sinks.query_service import Runner
from sinks.reports import Sections
from sinks.reports.funnel import cohort_progress
from sinks.reports.identity import MOVE_ORDER
from sinks.reports.period import Period

# (stage, label, rate key from the previous stage into this one), from the top of the funnel down.
STEPS = (
    ("awareness", "visitors", None),
    ("lead", "leads", "visitor_to_lead"),
    ("mql", "qualified leads (mql)", "lead_to_mql"),
    ("opportunity", "opportunities (deals)", "mql_to_opportunity"),
    ("customer", "wins", "opportunity_to_customer"),
)
RATE_KEYS = tuple(key for _, _, key in STEPS if key)

# People who visited in the period and were not leads yet when it began (a visitor later identified counts
# once, as the lead), and how many of them became leads in it: the book's lead acquisition rate
# (見込み客獲得率, new leads / visitors). Leads identified before the period (a nurturing list clicking an
# email) cannot become leads again; counted as visitors, they lowered the rate and inflated the visitors the
# plan asks for. "Became a lead" is leaving awareness, not any move into ``lead`` (a disqualified lead
# requalified is not new).
VISITORS = """
WITH links AS (
    -- the newest link, made whenever (the content report's stop at --until): a person counts once
    SELECT anonymous_id, argMax(lead_id, event_time) AS lead FROM leadpulse.leads FINAL
    WHERE anonymous_id IS NOT NULL AND anonymous_id != '' GROUP BY anonymous_id
),
people AS (
    -- an empty id is no id, as in the content report (sinks/reports/identity.py)
    SELECT coalesce(nullIf(e.lead_id, ''), nullIf(l.lead, ''), nullIf(e.anonymous_id, '')) AS who,
           coalesce(nullIf(e.lead_id, ''), nullIf(l.lead, '')) AS lead
    FROM leadpulse.events AS e FINAL LEFT JOIN links AS l ON e.anonymous_id = l.anonymous_id
    WHERE e.event_time >= fromUnixTimestamp64Milli({since:Int64})
      AND e.event_time < fromUnixTimestamp64Milli({until:Int64})
)
SELECT uniqExact(who) AS entered,
       uniqExactIf(who, lead IN (
           SELECT lead_id FROM leadpulse.stage_transitions FINAL
           WHERE from_stage = 'awareness' AND occurred_at >= fromUnixTimestamp64Milli({since:Int64})
             AND occurred_at < fromUnixTimestamp64Milli({until:Int64})
       )) AS reached
FROM people
WHERE lead IS NULL OR lead NOT IN (
    SELECT lead_id FROM leadpulse.stage_transitions FINAL
    WHERE from_stage = 'awareness' AND occurred_at < fromUnixTimestamp64Milli({since:Int64})
)
"""


# Of the leads that became opportunities in the period (first entry), how many were still open deals at
# ``until``: latest stage opportunity, never customer since that entry.
OPEN_DEALS = f"""
WITH cohort AS (
    SELECT lead_id, min(occurred_at) AS at FROM leadpulse.stage_transitions FINAL
    WHERE to_stage = 'opportunity'
      AND occurred_at >= fromUnixTimestamp64Milli({{since:Int64}})
      AND occurred_at < fromUnixTimestamp64Milli({{until:Int64}})
    GROUP BY lead_id
),
latest AS (
    SELECT lead_id, argMax(to_stage, {MOVE_ORDER}) AS stage,
           maxIf(occurred_at, to_stage IN ('customer', 'expansion')) AS won_at
    FROM leadpulse.stage_transitions FINAL
    WHERE occurred_at < fromUnixTimestamp64Milli({{until:Int64}}) GROUP BY lead_id
)
SELECT count() AS open FROM cohort AS c INNER JOIN latest AS l ON l.lead_id = c.lead_id
WHERE l.stage = 'opportunity' AND l.won_at < c.at
"""

AMOUNT_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def parse_amount(text: str, option: str) -> float:
    """``10M``, ``250k``, ``1.5m``, ``10,000,000`` or ``10_000_000``: targets are written the way planners
    write them (the docs' worked example is "10M / 1M")."""
    cleaned = text.strip().replace(",", "").replace("_", "")
    scale = AMOUNT_SUFFIXES.get(cleaned[-1:].lower(), 1.0) if cleaned else 1.0
    number = cleaned[:-1] if scale != 1.0 else cleaned
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"{option}: expected an amount like 10000000, 10M or 250k, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{option}: must be a positive amount, got {text!r}")
    return value


def parse_rates(text: str | None) -> dict[str, float]:
    """``visitor_to_lead=0.05,lead_to_mql=0.1`` (fractions or percentages like ``5%``)."""
    rates: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in RATE_KEYS:
            raise ValueError(
                f"--rates: expected KEY=RATE with KEY one of {', '.join(RATE_KEYS)}, got {part!r}"
            )
        raw = value.strip()
        try:
            rate = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError:
            raise ValueError(f"--rates: {key} must be a rate like 0.05 or 5%, got {raw!r}") from None
        if not 0 < rate <= 1:
            raise ValueError(f"--rates: {key} must be in (0, 1] (or 0-100%), got {raw}")
        rates[key] = rate
    return rates


def measured_rates(run: Runner, period: Period) -> tuple[dict[str, float | None], str | None]:
    """The measured rates, and a caveat on the win rate when deals of its cohort were still open.

    Each step's rate is a cohort share, never above 1: of those who entered the upper stage in the
    period, the share that reached the lower one (or a later stage) by ``until``. Why not entered(lower) /
    entered(upper): stages are skipped (a direct inquiry, a customer imported from the CRM), so that ratio
    counted people who were never in the upper stage, and gave win rates above 1."""
    progress = cohort_progress(run, period)
    opened = progress.entered("opportunity")
    won = progress.reached("opportunity", "customer")
    still_open = int(run(OPEN_DEALS, period.params).dicts()[0]["open"]) if opened else 0
    rates: dict[str, float | None] = {}
    for (above, _, _), (stage, _, key) in itertools.pairwise(STEPS):
        assert key is not None
        if above == "awareness":  # people, not leads: a visitor is known before being a lead
            row = run(VISITORS, period.params).dicts()[0]
            entered, reached = int(row["entered"]), int(row["reached"])
        else:
            entered, reached = progress.entered(above), progress.reached(above, stage)
        rates[key] = reached / entered if entered else None
    return rates, _open_deals_note(opened, won, still_open)


def _open_deals_note(opened: int, won: int, still_open: int) -> str | None:
    """Why the measured win rate may be low: an open deal counts as not won. The win rate sales teams quote
    (受注率) is won / decided deals; a period that ends inside the sales cycle leaves many undecided."""
    if not still_open:
        return None
    decided = opened - still_open
    closed = f"won/decided {won}/{decided} = {won / decided:.4g}" if decided else "none decided yet"
    return (
        f"{still_open} of the {opened} opportunities opened in the period were still open at --until and "
        f"count as not won ({closed}); end --until a sales cycle later or give --rates "
        "opportunity_to_customer=RATE"
    )


def reverse_plan(
    target_revenue: float, average_deal: float, rates: Mapping[str, float | None]
) -> list[dict[str, object]]:
    if target_revenue <= 0 or average_deal <= 0:
        raise ValueError("--target and --deal-size must be positive amounts")
    # exact: carried up unrounded (see the module docstring); shown rounded up
    wins = target_revenue / average_deal
    if not math.isfinite(wins):
        raise ValueError("--target / --deal-size is too large a number of wins to plan for")
    exact: float | None = math.ceil(wins - 1e-9)
    rows: list[dict[str, object]] = []
    for stage, label, key in reversed(STEPS):
        if exact is not None and not math.isfinite(exact):  # rates such as 1e-300 divided past a float
            raise ValueError(f"the rates ask for more {label} than a number holds: check --rates")
        # 80 / 0.1 is 799.999... or 800.000...1 in floating point; neither should become 801.
        shown = None if exact is None else math.ceil(exact * (1 - 1e-12))
        rows.append({"stage": stage, "label": label, "needed": shown})
        if key is None:
            break
        rate = rates.get(key)
        rows[-1]["rate_from_previous"] = rate
        rows[-1]["rate_key"] = key
        exact = exact / rate if exact is not None and rate else None
    for row in rows:
        row.setdefault("rate_from_previous", None)
        row.setdefault("rate_key", None)
    return rows


def plan_report(
    run: Runner | None,
    period: Period | None,
    target_revenue: float,
    average_deal: float,
    overrides: Mapping[str, float] | None = None,
) -> Sections:
    """Plan rows, wins first. With every rate overridden no query runs (``run`` may be None)."""
    overrides = dict(overrides or {})
    measured: dict[str, float | None] = {}
    open_deals: str | None = None
    if set(RATE_KEYS) - set(overrides):
        if run is None or period is None:
            raise ValueError("measured rates need ClickHouse: pass --rates for every step or run with data")
        measured, open_deals = measured_rates(run, period)
    rates = {key: overrides.get(key, measured.get(key)) for key in RATE_KEYS}
    rows = reverse_plan(target_revenue, average_deal, rates)
    upper = {key: stage for (stage, _, _), (_, _, key) in itertools.pairwise(STEPS)}
    for row in rows:
        key = row["rate_key"]
        row["rate_source"] = None if key is None else ("override" if key in overrides else "measured")
        if isinstance(row["rate_from_previous"], float):
            row["rate_from_previous"] = round(row["rate_from_previous"], 4)
        row["note"] = (
            _gap(key, row["rate_from_previous"], upper) if row["rate_source"] == "measured" else None
        )
        if key == "opportunity_to_customer" and row["rate_source"] == "measured" and open_deals:
            row["note"] = f"{row['note']}; {open_deals}" if row["note"] else open_deals
    return {"plan": rows}


def _gap(key: object, rate: object, upper: Mapping[str | None, str]) -> str | None:
    """Why a step (and every step above it) has no number: a planner otherwise sees only ``-``."""
    if rate is None:
        return f"nobody entered {upper[str(key)]} in the period: no rate measured; give --rates {key}=RATE"
    if rate == 0:
        return f"measured {key} is 0 in the period: the target cannot be reached; give --rates {key}=RATE"
    return None
