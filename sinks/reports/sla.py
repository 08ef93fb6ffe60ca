"""SLA: follow-up time after a lead becomes MQL (percentiles), compliance with the follow-up SLA, and
warnings/breaches per owner from ``sla_events``.

Follow-up = the first activity at/after the MQL transition, before the lead's next MQL entry (a new clock),
that stops the worker's follow-up clock
(``agents.sla.FOLLOW_UP_ACTIVITIES``: first_touch, accepted, rejected, meeting_booked, ...), so the report and
the ``sla_timeout`` events judge the same thing. A follow-up before the MQL (sales contacted the lead before
it turned hot) does not answer it, however recent (decided, docs/clickhouse.md): the hot-lead alert asks for
a follow-up of the interest that made the lead hot, and the worker starts the clock and breaches it the
same. Compliance = MQL entries in the period followed up within
``sla_hours`` / the MQL entries in the period that can be judged (an MQL nobody followed up counts as not
compliant once its deadline has passed). Not judged (``not_judged``), as the worker fires no breach for them:
an MQL not followed up whose deadline had not passed at ``until`` (an MQL of the last hours of the period is
not a miss yet; counted as one, the report of "today" always showed compliance below the truth), and an MQL
disqualified by its profile before its deadline without a follow-up (sales owes a competitor or a student no
call; the worker stops that clock with no breach).
Own-SLA compliance = the same against each MQL's own clock, the ``sla_due_at`` of its hot lead (1 h for a
direct inquiry, per-segment hours), over the MQLs that had one (a late MQL notified nobody and has none) and
can be judged against it (``not_judged_own``); an answer exactly at the due time is in time, as for the
worker.
``by_owner`` counts every SLA's warnings and breaches (follow-up and rejection feedback), one row per SLA and
owner, of the clocks started in the period (an MQL or a rejection in it), whenever they fell due: the same
cohort as ``follow_up``, and in event time. Not by ``fired_at``: that is the worker's wall clock, so a backlog
or a replay put breaches of last week into today, and a report for a past period left them out.
``owner_compliance``: per owner, the MQLs of the period notified to them as hot leads and their own-SLA
compliance (as above), next to by_owner's follow-up warnings and breaches, so a breach count is read against
the MQLs behind it. Owner = by_owner's identity for that clock: the owner on its breach, else its warning,
else its hot lead's, else ``(unassigned)`` (an empty owner is none: a CRM's "" made a second nobody row).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.sla import FOLLOW_UP as FOLLOW_UP_SLA
from agents.sla import FOLLOW_UP_ACTIVITIES
from sinks.query_service import Runner
from sinks.reports import Rows, Sections
from sinks.reports.period import Period

# Every MQL of the period with its follow-up, its own clock, whether it can be judged and its owner.
JUDGED = """
WITH mqls AS (
    SELECT lead_id, at, if(next_at > at, next_at, toInt64(9223372036854775807)) AS next_at FROM (
        SELECT lead_id, toUnixTimestamp64Milli(occurred_at) AS at,
               leadInFrame(at, 1, toInt64(0)) OVER (PARTITION BY lead_id ORDER BY at
                                                    ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING) AS next_at
        FROM leadpulse.stage_transitions FINAL WHERE to_stage = 'mql'
    )
    WHERE at >= {since:Int64} AND at < {until:Int64}
),
acts AS (
    SELECT lead_id, toUnixTimestamp64Milli(event_time) AS at FROM leadpulse.sales_activities FINAL
    WHERE activity IN {activities:Array(String)}
),
-- an answer belongs to the lead's latest MQL before it: the next MQL entry starts a new clock (the worker
-- keeps one per lead), so one first_touch never answers an earlier, recycled MQL as well
answered AS (
    SELECT m.lead_id AS lead_id, m.at AS mql_at,
           minIf(a.at, a.lead_id != '' AND a.at >= m.at AND a.at < m.next_at) AS answer_at,
           countIf(a.lead_id != '' AND a.at >= m.at AND a.at < m.next_at) > 0 AS followed
    FROM mqls AS m LEFT JOIN acts AS a ON a.lead_id = m.lead_id
    GROUP BY m.lead_id, m.at
),
-- when the MQL was disqualified by its profile, if that was how it left mql (the worker stops its clock then)
exits AS (
    SELECT lead_id, to_stage, toUnixTimestamp64Milli(occurred_at) AS at FROM leadpulse.stage_transitions FINAL
    WHERE from_stage = 'mql'
),
dropped AS (
    SELECT m.lead_id AS lead_id, m.at AS mql_at,
           argMinIf(x.to_stage, x.at, x.lead_id != '' AND x.at >= m.at) = 'disqualified' AS dq,
           minIf(x.at, x.lead_id != '' AND x.at >= m.at) AS dq_at
    FROM mqls AS m LEFT JOIN exits AS x ON x.lead_id = m.lead_id
    GROUP BY m.lead_id, m.at
),
-- the clock the worker started for that MQL (its hot lead's due time; a late MQL notified nobody: none;
-- workers before stop 23 notified an MQL whose follow-up, at or after it, reached them first with no
-- clock: due 0, left out of the own-clock figures; newer ones start and judge that clock) and whom its hot
-- lead named
clocks AS (
    SELECT lead_id, toUnixTimestamp64Milli(became_hot_at) AS at,
           maxIf(toUnixTimestamp64Milli(assumeNotNull(sla_due_at)), sla_due_at IS NOT NULL) AS due,
           any(nullIf(owner, '')) AS owner
    FROM leadpulse.hot_leads FINAL GROUP BY lead_id, at
),
-- the owner the worker put on that clock's warning/breach (the clock's owner, else the lead's when it fired)
fired AS (
    SELECT lead_id, toUnixTimestamp64Milli(started_at) AS at,
           anyIf(nullIf(owner, ''), level = 'breach') AS breach_owner,
           anyIf(nullIf(owner, ''), level = 'warning') AS warning_owner
    FROM leadpulse.sla_events FINAL WHERE sla = 'hot_lead_follow_up' GROUP BY lead_id, at
),
judged AS (
    SELECT x.followed AS followed, x.answer_at AS answer_at, x.mql_at AS mql_at, c.due AS due,
           c.lead_id != '' AS notified,
           ifNull(coalesce(f.breach_owner, f.warning_owner, c.owner), '(unassigned)') AS owner,
           -- not followed up, and the deadline still ahead at ``until`` or the lead disqualified before it
           NOT x.followed AND (x.mql_at + {sla_ms:Int64} >= {until:Int64}
                               OR (d.dq AND d.dq_at <= x.mql_at + {sla_ms:Int64})) AS open_flat,
           c.due > 0 AND NOT x.followed
               AND (c.due >= {until:Int64} OR (d.dq AND d.dq_at <= c.due)) AS open_own
    FROM answered AS x
    LEFT JOIN clocks AS c ON c.lead_id = x.lead_id AND c.at = x.mql_at
    LEFT JOIN dropped AS d ON d.lead_id = x.lead_id AND d.mql_at = x.mql_at
    LEFT JOIN fired AS f ON f.lead_id = x.lead_id AND f.at = x.mql_at
)
"""

# follow_up and owner_compliance in one pass over JUDGED: the grouping set ``()`` is every MQL of the period
# (``all_owners`` = 1), ``(owner)`` a row per owner. owner_compliance keeps the owners with hot leads (the
# MQLs notified; a late MQL, notified to nobody, is no owner's); its own-clock counts need no filter, as
# only a notified MQL has a clock.
FOLLOW_UP = (
    JUDGED
    + """
SELECT grouping(owner) AS all_owners, owner,
       count() AS mqls, countIf(notified) AS hot_leads, countIf(followed) AS followed_up,
       countIf(followed AND answer_at - mql_at <= {sla_ms:Int64}) AS within_sla,
       countIf(open_flat) AS not_judged,
       countIf(due > 0) AS with_own_sla,
       countIf(due > 0 AND followed AND answer_at <= due) AS within_own_sla,
       countIf(open_own) AS not_judged_own,
       quantilesExactInclusiveIf(0.5, 0.9, 0.95)((answer_at - mql_at) / 3600000, followed) AS hours
FROM judged GROUP BY GROUPING SETS ((), (owner))
"""
)
OWNER_COLUMNS = (
    "owner",
    "hot_leads",
    "with_own_sla",
    "within_own_sla",
    "not_judged_own",
    "own_sla_compliance",
    "warnings",
    "breaches",
)

BY_OWNER = """
SELECT sla, ifNull(nullIf(owner, ''), '(unassigned)') AS owner, countIf(level = 'warning') AS warnings,
       countIf(level = 'breach') AS breaches
FROM leadpulse.sla_events FINAL
WHERE started_at >= fromUnixTimestamp64Milli({since:Int64})
    AND started_at < fromUnixTimestamp64Milli({until:Int64})
GROUP BY sla, owner ORDER BY sla, breaches DESC, warnings DESC, owner
"""


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def _num(value: float | None) -> float | None:
    return round(value, 2) if value is not None and value == value else None


def sla_report(run: Runner, period: Period, sla_hours: float = 24.0) -> Sections:
    params = {
        **period.params,
        "sla_ms": int(sla_hours * 3_600_000),
        "activities": sorted(FOLLOW_UP_ACTIVITIES),
    }
    rows = run(FOLLOW_UP, params).dicts()
    row = next(r for r in rows if r["all_owners"])
    hours = row.pop("hours") or [None, None, None]
    mqls, not_judged = int(row["mqls"]), int(row["not_judged"])
    with_own, not_judged_own = int(row["with_own_sla"]), int(row["not_judged_own"])
    follow_up = {
        "mqls": mqls,
        "followed_up": int(row["followed_up"]),
        "within_sla": int(row["within_sla"]),
        "sla_hours": sla_hours,
        "compliance": _share(int(row["within_sla"]), mqls - not_judged),
        "not_judged": not_judged,
        "with_own_sla": with_own,
        "within_own_sla": int(row["within_own_sla"]),
        "own_sla_compliance": _share(int(row["within_own_sla"]), with_own - not_judged_own),
        "not_judged_own": not_judged_own,
        "p50_hours": _num(hours[0]) if row["followed_up"] else None,
        "p90_hours": _num(hours[1]) if row["followed_up"] else None,
        "p95_hours": _num(hours[2]) if row["followed_up"] else None,
    }
    owners = run(BY_OWNER, period.params).section()
    return {
        "follow_up": [follow_up],
        "by_owner": owners,
        "owner_compliance": owner_compliance(
            [r for r in rows if not r["all_owners"] and int(r["hot_leads"])], owners
        ),
    }


def owner_compliance(judged: list[dict[str, Any]], by_owner: list[dict[str, Any]]) -> Rows:
    """One row per owner: their hot leads of the period, own-clock compliance, and the follow-up warnings
    and breaches ``by_owner`` counts for them, so a breach count can be read against the MQLs behind it.
    Worst compliance first (owners with nothing to judge last)."""
    rows: dict[str, dict[str, Any]] = {}
    for r in judged:
        with_own, not_judged_own = int(r["with_own_sla"]), int(r["not_judged_own"])
        rows[r["owner"]] = {
            "owner": r["owner"],
            "hot_leads": int(r["hot_leads"]),
            "with_own_sla": with_own,
            "within_own_sla": int(r["within_own_sla"]),
            "not_judged_own": not_judged_own,
            "own_sla_compliance": _share(int(r["within_own_sla"]), with_own - not_judged_own),
            "warnings": 0,
            "breaches": 0,
        }
    for r in by_owner:
        if r["sla"] != FOLLOW_UP_SLA:
            continue
        row = rows.setdefault(
            r["owner"],
            dict.fromkeys(OWNER_COLUMNS, 0) | {"owner": r["owner"], "own_sla_compliance": None},
        )
        row["warnings"], row["breaches"] = int(r["warnings"]), int(r["breaches"])
    ordered = sorted(
        rows.values(),
        key=lambda r: (
            r["own_sla_compliance"] is None,
            r["own_sla_compliance"] or 0,
            -r["breaches"],
            r["owner"],
        ),
    )
    return Rows(ordered, OWNER_COLUMNS)


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def compliance_headline(follow: Mapping[str, Any]) -> dict[str, str]:
    """The follow-up compliance for a summary (the demo's closing line and its HTML strip), label -> text:
    first the own-clock figure (each MQL against its own deadline: 1 h for a direct inquiry, per-segment
    hours; what the worker's breaches judge), then the flat ``--sla-hours`` one beside it, labelled (it
    forgives a 1 h inquiry answered after 23 h)."""
    hours = follow.get("sla_hours", 24.0)
    return {
        "SLA compliance (own clock)": _percent(follow.get("own_sla_compliance")),
        f"within {hours:g} h (flat)": _percent(follow.get("compliance")),
    }


def compliance_line(follow: Mapping[str, Any]) -> str:
    """One sentence: the own-clock compliance with its counts, the flat figure beside it."""
    own_judged = int(follow.get("with_own_sla", 0)) - int(follow.get("not_judged_own", 0))
    flat_judged = int(follow.get("mqls", 0)) - int(follow.get("not_judged", 0))
    hours = follow.get("sla_hours", 24.0)
    return (
        f"SLA compliance {_percent(follow.get('own_sla_compliance'))} on each hot lead's own clock "
        f"({follow.get('within_own_sla', 0)} of {own_judged} judged answered by their deadline); flat "
        f"{hours:g} h: {_percent(follow.get('compliance'))} ({follow.get('within_sla', 0)} of {flat_judged})"
    )
