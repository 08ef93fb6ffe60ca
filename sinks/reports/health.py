"""Content health: unused items (no touch in ``unused_days``), stale items (not updated in ``stale_days``)
and, per funnel stage, how many items cover it and how many of those are in use and fresh.

Measured as of ``period.until``; touches are looked for in the ``unused_days`` before it (``since`` plays no
part: "unused" is about the item, not about the period asked for). Items published after the last day
before ``until`` are left out: they did not exist yet (the catalogue keeps only each item's latest load,
so an item updated since is judged by that later ``updated_date``).
"""

from __future__ import annotations

from agents.stages import FUNNEL_PATH
from sinks.query_service import Runner
from sinks.reports import Rows, Sections
from sinks.reports.identity import RESOLVED_EVENTS
from sinks.reports.period import DAY_MS, Period, clamp

FLAGGED_COLUMNS = (
    "content_id",
    "title",
    "content_type",
    "funnel_stage",
    "updated_date",
    "touches",
    "unused",
    "stale",
    "days_since_touch",
)
STAGES = FUNNEL_PATH

ITEMS = f"""
WITH {RESOLVED_EVENTS},
last AS (SELECT content_id, max(t) AS last_touch, uniqExact(view) AS touches FROM touches GROUP BY content_id)
SELECT c.content_id AS content_id, c.title AS title, c.content_type AS content_type,
       c.funnel_stage AS funnel_stage, toString(c.updated_date) AS updated_date,
       if(l.content_id = '', NULL, l.last_touch) AS last_touch_ms, ifNull(l.touches, 0) AS touches,
       l.content_id = '' AS unused,
       -- the UTC day of until, as every period bound is UTC (not the engine's zone: chDB takes the machine's)
       dateDiff('day', c.updated_date, toDate(fromUnixTimestamp64Milli({{until:Int64}}, 'UTC')))
           > {{stale_days:Int64}} AS stale
FROM catalogue AS c LEFT JOIN last AS l ON l.content_id = c.content_id
-- items that existed by the last (UTC) day the period covers: a past report lists no later item as unused
WHERE c.published_date <= toDate(fromUnixTimestamp64Milli({{until:Int64}} - 1, 'UTC'))
ORDER BY funnel_stage, content_id
"""


def health_report(run: Runner, period: Period, unused_days: int = 90, stale_days: int = 365) -> Sections:
    # The unused_days before --until, whatever --since says: a narrow period must not make every item unused.
    window = Period(clamp(period.until_ms - unused_days * DAY_MS), period.until_ms)
    items = run(ITEMS, {**window.params, "stale_days": stale_days}).dicts()
    for item in items:
        item["unused"], item["stale"] = bool(item["unused"]), bool(item["stale"])
        last = item.pop("last_touch_ms")
        item["days_since_touch"] = None if last is None else round((period.until_ms - last) / DAY_MS, 1)
    coverage = []
    for stage in STAGES:
        in_stage = [i for i in items if i["funnel_stage"] == stage]
        coverage.append(
            {
                "funnel_stage": stage,
                "items": len(in_stage),
                "used": sum(not i["unused"] for i in in_stage),
                "fresh": sum(not i["stale"] for i in in_stage),
                "covered": any(not i["unused"] and not i["stale"] for i in in_stage),
            }
        )
    flagged = Rows((i for i in items if i["unused"] or i["stale"]), FLAGGED_COLUMNS)
    return {"flagged": flagged, "coverage": coverage}
