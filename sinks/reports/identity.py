"""SQL shared by the reports: events resolved to a lead, and touches of catalogue content.

Why resolve here: an anonymous visitor who later identifies (a ``lead_identified`` with that
``anonymous_id``) is the same lead; their earlier views and downloads count for the lead (DESIGN §3), when
the link was made by ``until`` (a visitor who identified after the period was no lead in it).
Beware ClickHouse aliases: ``assumeNotNull(x) AS x`` would make a later ``WHERE x IS NOT NULL`` test the
alias, never NULL; so nullable columns and their not-null aliases carry different names here.
Times are converted to Int64 epoch milliseconds once, so the attribution arithmetic stays integer.
"""

from __future__ import annotations

TARGET_STAGES = "('mql', 'opportunity', 'customer')"

# A lead's moves in the order the worker made them. Several moves can share an ``occurred_at`` (the worker
# stamps a move no earlier than the one before it), and ``transition_id`` is ``lead:seq`` as text, where
# "L:10" < "L:9": so ties are broken by the number after the last ':' (the text only if there is none).
MOVE_ORDER = "(occurred_at, toUInt64OrZero(substringIndex(transition_id, ':', -1)), transition_id)"

# An empty id is no id: the collector admits ``lead_id: ""`` beside an anonymous id (a cleared tracker
# cookie) and the worker keys such an event by the anonymous id (``lead_id or anonymous_id``); read as a
# lead, every such visitor was the one lead "". nullIf reads the two ids as the worker does.
RESOLVED_EVENTS = """
-- links made by --until only, as transitions: a closed period's report does not change as time passes
identity AS (
    SELECT assumeNotNull(anonymous_id) AS anon, argMax(lead_id, event_time) AS resolved
    FROM leadpulse.leads FINAL
    WHERE anonymous_id IS NOT NULL AND anonymous_id != ''
      AND event_time < fromUnixTimestamp64Milli({until:Int64})
    GROUP BY anon
),
ev AS (
    SELECT e.event_type AS event_type, toUnixTimestamp64Milli(e.event_time) AS t, e.dwell_ms AS dwell_ms,
           -- one page load: its web_visit and its content_view reports share page_view_id (else one each)
           -- (prefixed: an SDK event's id and a tracker's page view id never merge)
           if(ifNull(e.page_view_id, '') != '', concat('p:', assumeNotNull(e.page_view_id)),
              concat('e:', e.event_id)) AS view,
           e.content_id AS item_id, coalesce(e.url, e.link_url) AS touch_url,
           coalesce(nullIf(e.lead_id, ''), nullIf(i.resolved, '')) AS lead,
           coalesce(nullIf(e.lead_id, ''), nullIf(i.resolved, ''), nullIf(e.anonymous_id, '')) AS visitor
    FROM leadpulse.events AS e FINAL
    LEFT JOIN identity AS i ON i.anon = ifNull(e.anonymous_id, '')
    WHERE e.event_time >= fromUnixTimestamp64Milli({since:Int64})
      AND e.event_time < fromUnixTimestamp64Milli({until:Int64})
),
catalogue AS (
    SELECT content_id, title, content_type, funnel_stage, url, published_date, updated_date
    FROM leadpulse.content FINAL
),
-- A visit or click touches an item when its url is the item's catalogue url up to the query string (utm_*
-- tags), the fragment and a trailing slash. A catalogue url with a query string (a CMS page such as
-- /content?id=5) must match with its query, or every /content?id=N would be the same item.
catalogue_urls AS (
    SELECT content_id, position(assumeNotNull(url), '?') > 0 AS with_query,
           if(with_query, cutFragment(assumeNotNull(url)),
              trimRight(cutQueryStringAndFragment(assumeNotNull(url)), '/')) AS url_key
    FROM catalogue WHERE url IS NOT NULL
),
url_touches AS (
    SELECT event_type, t, dwell_ms, view, lead, cutFragment(assumeNotNull(touch_url)) AS full_key,
           trimRight(cutQueryStringAndFragment(assumeNotNull(touch_url)), '/') AS page_key
    FROM ev WHERE item_id IS NULL AND touch_url IS NOT NULL
),
touches AS (
    SELECT assumeNotNull(item_id) AS content_id, event_type, t, dwell_ms, view, lead
    FROM ev WHERE item_id IS NOT NULL
    UNION ALL
    SELECT c.content_id AS content_id, u.event_type AS event_type, u.t AS t, u.dwell_ms AS dwell_ms,
           u.view AS view, u.lead AS lead
    FROM url_touches AS u
    INNER JOIN (SELECT content_id, url_key FROM catalogue_urls WHERE NOT with_query) AS c
        ON c.url_key = u.page_key
    UNION ALL
    SELECT c.content_id AS content_id, u.event_type AS event_type, u.t AS t, u.dwell_ms AS dwell_ms,
           u.view AS view, u.lead AS lead
    FROM url_touches AS u
    INNER JOIN (SELECT content_id, url_key FROM catalogue_urls WHERE with_query) AS c
        ON c.url_key = u.full_key
),
-- transitions up to --until only: a closed period's report does not change as time passes (as in funnel)
tr AS (
    SELECT lead_id, to_stage, from_stage, reason, toUnixTimestamp64Milli(occurred_at) AS at
    FROM leadpulse.stage_transitions FINAL
    WHERE occurred_at < fromUnixTimestamp64Milli({until:Int64})
)"""
