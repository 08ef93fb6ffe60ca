-- Ready views for analysts: daily content usage and daily funnel movement, maintained on insert.
-- Targets are Aggregating/SummingMergeTree: always read them with -Merge / sum() + GROUP BY, never rely on
-- merges. They set non_replicated_deduplication_window too, so a re-sent batch (same dedup token) is not
-- aggregated twice (the sink inserts with deduplicate_blocks_in_dependent_materialized_views=1).
-- Counts are "as received": an event re-published under a new offset is counted again here, while reports
-- on the raw tables (FINAL) count it once.

CREATE TABLE IF NOT EXISTS leadpulse.content_usage_daily
(
    day           Date,
    content_id    String,
    event_type    LowCardinality(String),
    events        SimpleAggregateFunction(sum, UInt64),
    dwell_ms      SimpleAggregateFunction(sum, Int64),
    leads         AggregateFunction(uniq, String),
    visitors      AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (day, content_id, event_type)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS leadpulse.content_usage_daily_mv TO leadpulse.content_usage_daily AS
SELECT
    toDate(event_time) AS day,
    ifNull(content_id, '') AS content_id,
    event_type,
    toUInt64(count()) AS events,
    toInt64(sum(ifNull(dwell_ms, 0))) AS dwell_ms,
    uniqStateIf(assumeNotNull(lead_id), lead_id IS NOT NULL) AS leads,
    uniqState(assumeNotNull(coalesce(lead_id, anonymous_id, ''))) AS visitors
FROM leadpulse.events
-- Reads the same whether `content_id` resolves to the column or to the alias above.
WHERE content_id != ''
GROUP BY day, content_id, event_type;

CREATE TABLE IF NOT EXISTS leadpulse.funnel_daily
(
    day          Date,
    from_stage   LowCardinality(String),
    to_stage     LowCardinality(String),
    transitions  UInt64,
    recycles     UInt64
)
ENGINE = SummingMergeTree
ORDER BY (day, from_stage, to_stage)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS leadpulse.funnel_daily_mv TO leadpulse.funnel_daily AS
SELECT
    toDate(occurred_at) AS day,
    from_stage,
    to_stage,
    toUInt64(count()) AS transitions,
    toUInt64(countIf(startsWith(reason, 'recycled'))) AS recycles
FROM leadpulse.stage_transitions
GROUP BY day, from_stage, to_stage;
