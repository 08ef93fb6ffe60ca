"""SLA: follow-up time after a lead becomes MQL (percentiles), compliance with the follow-up SLA, and
warnings/breaches per owner from ``sla_events``.

Follow-up = the first activity at/after the MQL transition that stops the worker's follow-up clock
(``agents.sla.FOLLOW_UP_ACTIVITIES``: first_touch, accepted, rejected, meeting_booked, ...), so the report and
the ``sla_timeout`` events judge the same thing. Compliance = MQL entries in the period followed up within
``sla_hours`` / all MQL entries in the period (an MQL nobody followed up counts as not compliant).
Own-SLA compliance = the same against each MQL's own clock, the ``sla_due_at`` of its hot lead (1 h for a
direct inquiry, per-segment hours), over the MQLs that had one (a late MQL notified nobody and has none); an
answer exactly at the due time is in time, as for the worker.
``by_owner`` counts every SLA's warnings and breaches (follow-up and rejection feedback), one row per SLA and
owner, of the clocks started in the period (an MQL or a rejection in it), whenever they fell due: the same
cohort as ``follow_up``, and in event time. Not by ``fired_at``: that is the worker's wall clock, so a backlog
or a replay put breaches of last week into today, and a report for a past period left them out.
"""

from __future__ import annotations

from agents.sla import FOLLOW_UP_ACTIVITIES
from sinks.query_service import Runner
from sinks.reports import Sections
from sinks.reports.period import Period

FOLLOW_UP = """
WITH mqls AS (
    SELECT lead_id, toUnixTimestamp64Milli(occurred_at) AS at FROM leadpulse.stage_transitions FINAL
    WHERE to_stage = 'mql'
      AND occurred_at >= fromUnixTimestamp64Milli({since:Int64})
        AND occurred_at < fromUnixTimestamp64Milli({until:Int64})
),
acts AS (
    SELECT lead_id, toUnixTimestamp64Milli(event_time) AS at FROM leadpulse.sales_activities FINAL
    WHERE activity IN {activities:Array(String)}
),
answered AS (
    SELECT m.lead_id AS lead_id, m.at AS mql_at,
           minIf(a.at, a.lead_id != '' AND a.at >= m.at) AS answer_at,
           countIf(a.lead_id != '' AND a.at >= m.at) > 0 AS followed
    FROM mqls AS m LEFT JOIN acts AS a ON a.lead_id = m.lead_id
    GROUP BY m.lead_id, m.at
),
-- the clock the worker started for that MQL (its hot lead's due time; a late MQL notified nobody: none)
clocks AS (
    SELECT lead_id, toUnixTimestamp64Milli(became_hot_at) AS at,
           max(toUnixTimestamp64Milli(assumeNotNull(sla_due_at))) AS due
    FROM leadpulse.hot_leads FINAL WHERE sla_due_at IS NOT NULL GROUP BY lead_id, at
)
SELECT count() AS mqls, countIf(followed) AS followed_up,
       countIf(followed AND answer_at - mql_at <= {sla_ms:Int64}) AS within_sla,
       countIf(c.due > 0) AS with_own_sla,
       countIf(c.due > 0 AND followed AND answer_at <= c.due) AS within_own_sla,
       quantilesExactInclusiveIf(0.5, 0.9, 0.95)((answer_at - mql_at) / 3600000, followed) AS hours
FROM answered AS x LEFT JOIN clocks AS c ON c.lead_id = x.lead_id AND c.at = x.mql_at
"""

BY_OWNER = """
SELECT sla, ifNull(owner, '(unassigned)') AS owner, countIf(level = 'warning') AS warnings,
       countIf(level = 'breach') AS breaches
FROM leadpulse.sla_events FINAL
WHERE started_at >= fromUnixTimestamp64Milli({since:Int64})
    AND started_at < fromUnixTimestamp64Milli({until:Int64})
GROUP BY sla, owner ORDER BY sla, breaches DESC, warnings DESC, owner
"""


def _num(value: float | None) -> float | None:
    return round(value, 2) if value is not None and value == value else None


def sla_report(run: Runner, period: Period, sla_hours: float = 24.0) -> Sections:
    params = {
        **period.params,
        "sla_ms": int(sla_hours * 3_600_000),
        "activities": sorted(FOLLOW_UP_ACTIVITIES),
    }
    row = run(FOLLOW_UP, params).dicts()[0]
    hours = row.pop("hours") or [None, None, None]
    mqls = int(row["mqls"])
    follow_up = {
        "mqls": mqls,
        "followed_up": int(row["followed_up"]),
        "within_sla": int(row["within_sla"]),
        "sla_hours": sla_hours,
        "compliance": round(int(row["within_sla"]) / mqls, 4) if mqls else None,
        "with_own_sla": int(row["with_own_sla"]),
        "within_own_sla": int(row["within_own_sla"]),
        "own_sla_compliance": (
            round(int(row["within_own_sla"]) / int(row["with_own_sla"]), 4) if row["with_own_sla"] else None
        ),
        "p50_hours": _num(hours[0]) if row["followed_up"] else None,
        "p90_hours": _num(hours[1]) if row["followed_up"] else None,
        "p95_hours": _num(hours[2]) if row["followed_up"] else None,
    }
    owners = run(BY_OWNER, period.params).section()
    return {"follow_up": [follow_up], "by_owner": owners}
