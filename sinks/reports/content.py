"""Content performance per item: views, unique leads, downloads, clicks, mean dwell, leads influenced,
conversion of touched leads vs all leads, median days to the next stage (DESIGN §7).

Definitions (also in docs/clickhouse.md):
- a *touch* is a content_view or download of the item's id, or a web_visit / email_click whose url /
  link_url is the item's catalogue url (up to query string, fragment and trailing slash:
  ``sinks/reports/identity.py``); views = page views with a content_view or web_visit touch (the reports
  of one page load share ``page_view_id``; an event without one is a view of its own); mean dwell = the
  views' total content_view dwell / those views;
- *influenced*: leads with a touch in the period followed, within ``window_days``, by a transition to
  mql, opportunity or customer;
- *touched conversion*: share of touching leads with such a transition at/after their first touch;
  *all-leads conversion*: the same for every lead active in the period (after their first event);
- *median days to next stage*: from a lead's first touch of the item to its next stage transition.
"""

from __future__ import annotations

from typing import Any

from sinks.query_service import Runner
from sinks.reports import Rows, Sections
from sinks.reports.identity import RESOLVED_EVENTS, TARGET_STAGES
from sinks.reports.period import DAY_MS, Period

PER_ITEM = f"""
WITH {RESOLVED_EVENTS},
lead_touch AS (
    SELECT content_id, assumeNotNull(lead) AS lead_nn, min(t) AS first_touch, groupArray(t) AS times
    FROM touches WHERE lead IS NOT NULL GROUP BY content_id, lead_nn
),
lead_flags AS (
    SELECT lt.content_id AS content_id, lt.lead_nn AS lead,
           max(tr.lead_id != '' AND tr.to_stage IN {TARGET_STAGES} AND tr.at >= lt.first_touch) AS converted,
           max(tr.lead_id != '' AND tr.to_stage IN {TARGET_STAGES}
               AND arrayExists(x -> x <= tr.at AND tr.at <= x + {{window:Int64}}, lt.times)) AS influenced,
           minIf(tr.at, tr.lead_id != '' AND tr.at >= lt.first_touch) AS next_at,
           countIf(tr.lead_id != '' AND tr.at >= lt.first_touch) > 0 AS has_next,
           any(lt.first_touch) AS first_touch
    FROM lead_touch AS lt LEFT JOIN tr ON tr.lead_id = lt.lead_nn
    GROUP BY lt.content_id, lt.lead_nn
),
usage AS (
    SELECT content_id,
           uniqExactIf(view, event_type IN ('content_view', 'web_visit')) AS views,
           countIf(event_type = 'download') AS downloads,
           countIf(event_type = 'email_click') AS clicks,
           sumIf(dwell_ms, event_type = 'content_view' AND dwell_ms IS NOT NULL)
             / nullIf(uniqExactIf(view, event_type = 'content_view' AND dwell_ms IS NOT NULL), 0)
             AS mean_dwell_ms
    FROM touches GROUP BY content_id
),
leads_agg AS (
    SELECT content_id, count() AS unique_leads, countIf(influenced) AS influenced_leads,
           countIf(converted) AS converted_leads,
           quantileExactInclusiveIf(0.5)((next_at - first_touch) / {DAY_MS}, has_next) AS median_days
    FROM lead_flags GROUP BY content_id
)
SELECT u.content_id AS content_id, nullIf(c.title, '') AS title, nullIf(c.content_type, '') AS content_type,
       nullIf(c.funnel_stage, '') AS funnel_stage, u.views AS views,
       ifNull(l.unique_leads, 0) AS unique_leads,
       u.downloads AS downloads, u.clicks AS clicks, u.mean_dwell_ms AS mean_dwell_ms,
       ifNull(l.influenced_leads, 0) AS influenced_leads, ifNull(l.converted_leads, 0) AS converted_leads,
       if(l.content_id = '', NULL, l.median_days) AS median_days_to_next_stage
FROM usage AS u
LEFT JOIN leads_agg AS l ON l.content_id = u.content_id
LEFT JOIN catalogue AS c ON c.content_id = u.content_id
ORDER BY influenced_leads DESC, views DESC, content_id
"""

ALL_LEADS = f"""
WITH {RESOLVED_EVENTS},
active AS (
    SELECT assumeNotNull(lead) AS lead_nn, min(t) AS first_seen
    FROM ev WHERE lead IS NOT NULL GROUP BY lead_nn
)
SELECT count() AS leads, countIf(converted) AS converted FROM (
    SELECT a.lead_nn,
           max(tr.lead_id != '' AND tr.to_stage IN {TARGET_STAGES} AND tr.at >= a.first_seen) AS converted
    FROM active AS a LEFT JOIN tr ON tr.lead_id = a.lead_nn GROUP BY a.lead_nn
)
"""


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


COLUMNS = (
    "content_id",
    "title",
    "content_type",
    "funnel_stage",
    "views",
    "unique_leads",
    "downloads",
    "clicks",
    "influenced_leads",
    "mean_dwell_seconds",
    "touched_conversion",
    "all_leads_conversion",
    "lift",
    "median_days_to_next_stage",
)


def content_report(run: Runner, period: Period, window_days: int = 30) -> Sections:
    params: dict[str, Any] = {**period.params, "window": window_days * DAY_MS}
    items = run(PER_ITEM, params).dicts()
    overall = run(ALL_LEADS, params).dicts()[0]
    baseline = _ratio(overall["converted"], overall["leads"])
    rows = []
    for item in items:
        touched = _ratio(item.pop("converted_leads"), item["unique_leads"])
        dwell = item.pop("mean_dwell_ms")
        median = item.pop("median_days_to_next_stage")
        rows.append(
            {
                **item,
                "mean_dwell_seconds": round(dwell / 1000, 1)
                if dwell is not None and dwell == dwell
                else None,
                "touched_conversion": touched,
                "all_leads_conversion": baseline,
                "lift": round(touched / baseline, 2) if touched is not None and baseline else None,
                "median_days_to_next_stage": round(median, 2)
                if median is not None and median == median
                else None,
            }
        )
    return {"content": Rows(rows, COLUMNS)}
