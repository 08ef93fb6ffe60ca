-- Behavioural events: one row per event of the four event topics (DESIGN §7).
-- ReplacingMergeTree keyed by event_id: a re-published event (producer retry, replay) collapses to one row;
-- read with FINAL (or argMax) because merges are not guaranteed to have happened.
-- topic/partition/offset record where the row came from: lineage for analysts, and the sink's resume point.
CREATE DATABASE IF NOT EXISTS leadpulse;

CREATE TABLE IF NOT EXISTS leadpulse.events
(
    event_id        String,
    event_type      LowCardinality(String),
    event_time      DateTime64(3, 'UTC'),
    lead_id         Nullable(String),
    anonymous_id    Nullable(String),
    source          LowCardinality(String),
    received_at     Nullable(DateTime64(3, 'UTC')),
    url             Nullable(String),
    page_category   LowCardinality(Nullable(String)),
    referrer        Nullable(String),
    utm_source      Nullable(String),
    utm_medium      Nullable(String),
    utm_campaign    Nullable(String),
    utm_term        Nullable(String),
    utm_content     Nullable(String),
    campaign_id     Nullable(String),
    email_id        Nullable(String),
    link_url        Nullable(String),
    content_id      Nullable(String),
    asset_type      LowCardinality(Nullable(String)),
    content_type    LowCardinality(Nullable(String)),
    dwell_ms        Nullable(Int64),
    percent_viewed  Nullable(Float64),
    channel         LowCardinality(Nullable(String)),
    topic           LowCardinality(String),
    partition       UInt32,
    offset          UInt64,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    -- Storage-side sanity checks: a row breaking them is rejected by ClickHouse and dead-lettered by the sink.
    CONSTRAINT dwell_ms_not_negative CHECK ifNull(dwell_ms, 0) >= 0,
    CONSTRAINT percent_viewed_in_range CHECK ifNull(percent_viewed, 0) BETWEEN 0 AND 100
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (event_type, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
