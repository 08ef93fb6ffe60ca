"""Funnel: leads entering and currently in each stage, stage-to-stage conversion, velocity (median days
from entering a stage to entering the next), and recycles.

Period semantics: *entered* counts distinct leads with a transition into the stage inside the period
(awareness: leads leaving awareness); *current* is each lead's latest stage as of ``until``; velocity pairs
a lead's first entry into a stage with its first entry into the next stage, counted when the latter falls
inside the period.

*Feedback* (the closed loop of reference/sales-marketing-alignment-7-steps, steps 4-5: sales tell marketing
why a lead was not good enough): the rejections and lost deals of the period (event time of their first
``rejected``/``closed_lost`` record) by reason, a blank reason as ``NO_REASON`` (what the rejection_feedback
SLA chases), with the stage the record moved the lead out of (the transition it triggered: ``mql``/``sal`` for
a rejection, ``opportunity`` for a lost deal, ``expansion`` for a lost upsell; none when it moved nothing).
One rejection however many records tell it: a later record of the same activity that moved nothing, before
the lead entered such a stage again, is the same rejection (a rep giving the reason a blank one lacked, or
correcting it), and its reason is the last one given by ``until``. ``share`` is the row's part of that
activity's rejections (lost deals) in the period.

*Conversion* is a cohort share: of the leads that entered the stage in the period, those that reached any
later stage of the path by ``until`` (at or after their first entry in the period). Why not
entered(next) / entered(stage): stages can be skipped (a direct inquiry goes lead → mql, past nurturing),
so that ratio counted leads that never were in the stage and could exceed 1. A cohort share cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.stages import FUNNEL_PATH, STAGES, activity_move
from sinks.query_service import Runner
from sinks.reports import Rows, Sections
from sinks.reports.identity import MOVE_ORDER
from sinks.reports.period import DAY_MS, Period

PATH = FUNNEL_PATH

TRANSITIONS = """
SELECT lead_id, from_stage, to_stage, reason, toUnixTimestamp64Milli(occurred_at) AS at
FROM leadpulse.stage_transitions FINAL
WHERE occurred_at < fromUnixTimestamp64Milli({until:Int64})
"""

ENTERED = """
SELECT stage, uniqExact(lead_id) AS leads FROM (
    SELECT lead_id, to_stage AS stage FROM leadpulse.stage_transitions FINAL
    WHERE occurred_at >= fromUnixTimestamp64Milli({since:Int64})
      AND occurred_at < fromUnixTimestamp64Milli({until:Int64})
    UNION ALL
    SELECT lead_id, from_stage AS stage FROM leadpulse.stage_transitions FINAL
    WHERE from_stage = 'awareness'
      AND occurred_at >= fromUnixTimestamp64Milli({since:Int64})
        AND occurred_at < fromUnixTimestamp64Milli({until:Int64})
) GROUP BY stage
"""

CURRENT = f"""
SELECT stage, count() AS leads FROM (
    SELECT lead_id, argMax(to_stage, {MOVE_ORDER}) AS stage
    FROM leadpulse.stage_transitions FINAL
    WHERE occurred_at < fromUnixTimestamp64Milli({{until:Int64}}) GROUP BY lead_id
) GROUP BY stage
"""

# Per stage entered in the period: how many of those leads got how far along the path by ``until`` (the
# furthest path index reached at or after their first entry in the period; 0 = nowhere further). Funnel
# conversion and the plan's rates are both cohort shares read from this one distribution.
PROGRESS = """
WITH entries AS (
    SELECT lead_id, to_stage AS stage, min(toUnixTimestamp64Milli(occurred_at)) AS at
    FROM leadpulse.stage_transitions FINAL
    WHERE occurred_at >= fromUnixTimestamp64Milli({since:Int64})
      AND occurred_at < fromUnixTimestamp64Milli({until:Int64})
    GROUP BY lead_id, stage
    UNION ALL
    SELECT lead_id, 'awareness' AS stage, min(toUnixTimestamp64Milli(occurred_at)) AS at
    FROM leadpulse.stage_transitions FINAL
    WHERE from_stage = 'awareness'
      AND occurred_at >= fromUnixTimestamp64Milli({since:Int64})
      AND occurred_at < fromUnixTimestamp64Milli({until:Int64})
    GROUP BY lead_id
),
moves AS (
    SELECT lead_id, to_stage AS stage, toUnixTimestamp64Milli(occurred_at) AS at
    FROM leadpulse.stage_transitions FINAL
    WHERE occurred_at < fromUnixTimestamp64Milli({until:Int64})
)
SELECT stage, furthest, count() AS leads FROM (
    SELECT e.stage AS stage, e.lead_id,
           max(if(m.at >= e.at, indexOf({path:Array(String)}, m.stage), 0)) AS furthest
    FROM entries AS e LEFT JOIN moves AS m ON e.lead_id = m.lead_id
    WHERE indexOf({path:Array(String)}, e.stage) > 0
    GROUP BY e.stage, e.lead_id
) GROUP BY stage, furthest
"""

VELOCITY = f"""
WITH firsts AS (
    SELECT lead_id, to_stage AS stage, min(toUnixTimestamp64Milli(occurred_at)) AS at
    FROM leadpulse.stage_transitions FINAL
    WHERE occurred_at < fromUnixTimestamp64Milli({{until:Int64}}) GROUP BY lead_id, stage
)
SELECT a.stage AS stage, quantileExactInclusive(0.5)((b.at - a.at) / {DAY_MS}) AS median_days,
       count() AS leads
FROM firsts AS a INNER JOIN firsts AS b ON a.lead_id = b.lead_id
WHERE indexOf({{path:Array(String)}}, b.stage) = indexOf({{path:Array(String)}}, a.stage) + 1
  AND b.at >= a.at AND b.at >= {{since:Int64}}
GROUP BY a.stage
"""

# Why a recycle happened (its reason is ``recycled``, DESIGN §2): agents.stages.recycle_cause in SQL. Rows
# stored before stop 27 carry the cause in the reason (``recycled:rejected``), read as it is.
RECYCLE_CAUSE = """multiIf(
    position(reason, ':') > 0, substring(reason, position(reason, ':') + 1),
    startsWith(trigger_event_id, 'timer:'), arrayElement(splitByChar(':', trigger_event_id), -2),
    from_stage = 'opportunity', 'closed_lost',
    'rejected')"""

RECYCLES = f"""
SELECT from_stage, {RECYCLE_CAUSE} AS cause, count() AS recycles FROM leadpulse.stage_transitions FINAL
WHERE startsWith(reason, 'recycled')
  AND occurred_at >= fromUnixTimestamp64Milli({{since:Int64}})
    AND occurred_at < fromUnixTimestamp64Milli({{until:Int64}})
GROUP BY from_stage, cause ORDER BY recycles DESC, from_stage, cause
"""

NO_REASON = "(no reason given)"
FEEDBACK_ACTIVITIES = ("rejected", "closed_lost")
FEEDBACK_COLUMNS = ("activity", "from_stage", "reason", "count", "share", "leads")

# The stages each feedback activity moves a lead out of, as the worker applies it (rejected: mql, sal;
# closed_lost: opportunity, expansion): a lead that enters one again can be rejected (or lose a deal) anew.
LEAVES = [[a, s] for a in FEEDBACK_ACTIVITIES for s in STAGES if activity_move(s, a, 0, 0) is not None]

# One row per rejection / lost deal. Its first record is the one that moved the lead out (the transition
# whose trigger_event_id is the record's event_id gives that stage); a later record of the same activity that
# moved nothing, before the lead entered such a stage again, is the same rejection told again: a rep giving
# the reason a blank rejection lacked (what the rejection_feedback SLA chases), or correcting it. Its reason
# is the last one given by ``until``. A rejection counts in the period of its first record.
# The period's lower bound is the last line (``opened_at >= since``), not in the scans as in the other
# sections: a reason given in the period for a rejection opened before it must find that rejection to join
# it, else it counted as a rejection of this period. A mover's event time is its transition's
# ``occurred_at`` (a backward move needs its event to be at least as new as the stage, so nothing clamps
# it), the time recycles are bounded by: the period's recycles are its feedback rows with a stage.
FEEDBACK = """
WITH records AS (
    SELECT a.event_id AS event_id, a.lead_id AS lead_id, a.activity AS activity, a.at AS at,
           trimBoth(ifNull(a.reason, '')) AS reason, t.lead_id != '' AS moved,
           if(moved, t.from_stage, NULL) AS from_stage
    FROM (
        SELECT event_id, lead_id, activity, reason, toUnixTimestamp64Milli(event_time) AS at
        FROM leadpulse.sales_activities FINAL
        WHERE activity IN {activities:Array(String)}
          AND event_time < fromUnixTimestamp64Milli({until:Int64})
    ) AS a
    LEFT JOIN (
        SELECT lead_id, trigger_event_id, any(from_stage) AS from_stage FROM leadpulse.stage_transitions FINAL
        WHERE occurred_at < fromUnixTimestamp64Milli({until:Int64})
        GROUP BY lead_id, trigger_event_id
    ) AS t ON t.lead_id = a.lead_id AND t.trigger_event_id = a.event_id
),
-- each record with the lead's last entry, at or before it, into a stage its activity moves leads out of
entries AS (
    SELECT lead_id, to_stage, toUnixTimestamp64Milli(occurred_at) AS at FROM leadpulse.stage_transitions FINAL
    WHERE occurred_at < fromUnixTimestamp64Milli({until:Int64})
),
placed AS (
    SELECT r.event_id AS event_id, r.lead_id AS lead_id, r.activity AS activity, r.at AS at,
           r.reason AS reason, r.moved AS moved, r.from_stage AS from_stage,
           maxIf(e.at, e.lead_id != '' AND e.at <= r.at
                       AND has({leaves:Array(Array(String))}, [r.activity, e.to_stage])) AS entered_at
    FROM records AS r LEFT JOIN entries AS e ON e.lead_id = r.lead_id
    GROUP BY event_id, lead_id, activity, at, reason, moved, from_stage
),
-- since that entry, each record that moved the lead opens a rejection; the records after it join it
outcomes AS (
    SELECT lead_id, activity, min(at) AS opened_at, any(from_stage) AS from_stage,
           argMaxIf(reason, (at, event_id), reason != '') AS reason
    FROM (
        SELECT *, sum(moved) OVER (PARTITION BY lead_id, activity, entered_at ORDER BY at, event_id
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS nth
        FROM placed
    )
    GROUP BY lead_id, activity, entered_at, nth
)
SELECT activity, from_stage, if(reason = '', {no_reason:String}, reason) AS reason,
       count() AS count, uniqExact(lead_id) AS leads
FROM outcomes WHERE opened_at >= {since:Int64}
GROUP BY activity, from_stage, reason
"""


def feedback_rows(run: Runner, period: Period) -> Rows:
    """Why sales rejected leads and lost deals in the period: per activity, the stage it moved the lead out
    of and the reason, most frequent first; ``share`` of that activity's rejections (lost deals)."""
    params = {
        **period.params,
        "activities": list(FEEDBACK_ACTIVITIES),
        "leaves": LEAVES,
        "no_reason": NO_REASON,
    }
    rows = run(FEEDBACK, params).dicts()
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["activity"]] = totals.get(row["activity"], 0) + int(row["count"])
    out = [
        {
            "activity": row["activity"],
            "from_stage": row["from_stage"],
            "reason": row["reason"],
            "count": int(row["count"]),
            "share": round(int(row["count"]) / totals[row["activity"]], 4),
            "leads": int(row["leads"]),
        }
        for row in rows
    ]
    order = {a: i for i, a in enumerate(FEEDBACK_ACTIVITIES)}
    out.sort(key=lambda r: (order.get(r["activity"], 99), -r["count"], r["from_stage"] or "~", r["reason"]))
    return Rows(out, FEEDBACK_COLUMNS)


def entered_counts(run: Runner, period: Period) -> dict[str, int]:
    return {r["stage"]: int(r["leads"]) for r in run(ENTERED, period.params).dicts()}


@dataclass(frozen=True)
class Progress:
    """Per path stage entered in the period: leads by the furthest path position (1-based) they reached."""

    furthest: dict[str, dict[int, int]]

    def entered(self, stage: str) -> int:
        return sum(self.furthest.get(stage, {}).values())

    def reached(self, stage: str, target: str) -> int:
        """Of the leads that entered ``stage``, those that reached ``target`` or a later path stage."""
        at_least = PATH.index(target) + 1
        return sum(n for where, n in self.furthest.get(stage, {}).items() if where >= at_least)


def cohort_progress(run: Runner, period: Period) -> Progress:
    furthest: dict[str, dict[int, int]] = {}
    for row in run(PROGRESS, {**period.params, "path": list(PATH)}).dicts():
        furthest.setdefault(row["stage"], {})[int(row["furthest"])] = int(row["leads"])
    return Progress(furthest)


def funnel_report(run: Runner, period: Period) -> Sections:
    entered = entered_counts(run, period)
    current = {r["stage"]: int(r["leads"]) for r in run(CURRENT, period.params).dicts()}
    with_path = {**period.params, "path": list(PATH)}
    velocity = {r["stage"]: r for r in run(VELOCITY, with_path).dicts()}
    progress = cohort_progress(run, period)
    stages = []
    for index, stage in enumerate(PATH):
        following = PATH[index + 1] if index + 1 < len(PATH) else None
        here = entered.get(stage, 0)
        conversion = round(progress.reached(stage, following) / here, 4) if following and here else None
        median = velocity.get(stage, {}).get("median_days")
        stages.append(
            {
                "stage": stage,
                "entered": here,
                "current": current.get(stage, 0),
                "next_stage": following,
                "conversion_to_next": conversion,
                "median_days_to_next": round(median, 2) if median is not None and median == median else None,
            }
        )
    for extra in ("disqualified",):
        stages.append(
            {
                "stage": extra,
                "entered": entered.get(extra, 0),
                "current": current.get(extra, 0),
                "next_stage": None,
                "conversion_to_next": None,
                "median_days_to_next": None,
            }
        )
    return {
        "stages": stages,
        "recycles": run(RECYCLES, period.params).section(),
        "feedback": feedback_rows(run, period),
    }
