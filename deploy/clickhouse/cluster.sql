-- Cluster variant of sinks/migrations/*.sql: Replicated*MergeTree local tables + Distributed tables.
-- Generated once from the common DDL and edited by hand; keep the column lists in step with it.
-- Sharding key: cityHash64(lead id) so one lead's rows share a shard (reports join by lead).

CREATE DATABASE IF NOT EXISTS leadpulse ON CLUSTER '{cluster}';

CREATE TABLE IF NOT EXISTS leadpulse.events_local ON CLUSTER '{cluster}'
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
    CONSTRAINT dwell_ms_not_negative CHECK ifNull(dwell_ms, 0) >= 0,
    CONSTRAINT percent_viewed_in_range CHECK ifNull(percent_viewed, 0) BETWEEN 0 AND 100
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leadpulse/events', '{replica}')
PARTITION BY toYYYYMM(event_time)
ORDER BY (event_type, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.events ON CLUSTER '{cluster}' AS leadpulse.events_local
ENGINE = Distributed('{cluster}', leadpulse, events_local, cityHash64(ifNull(lead_id, ifNull(anonymous_id, event_id))));

CREATE TABLE IF NOT EXISTS leadpulse.lead_scores_local ON CLUSTER '{cluster}'
(
    lead_id           String,
    score             Float64,
    fit               Float64,
    behaviour         Float64,
    previous_score    Float64,
    band              LowCardinality(String),
    stage             LowCardinality(String),
    as_of             DateTime64(3, 'UTC'),
    trigger_event_id  String,
    computed_at       DateTime64(3, 'UTC'),
    account_domain    Nullable(String),
    account_score     Nullable(Float64),
    reasons           String COMMENT 'JSON array of the top contributing signals',
    change_reason     LowCardinality(String),
    topic             LowCardinality(String),
    partition         UInt32,
    offset            UInt64,
    inserted_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leadpulse/lead_scores', '{replica}')
ORDER BY (lead_id, as_of, trigger_event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.lead_scores ON CLUSTER '{cluster}' AS leadpulse.lead_scores_local
ENGINE = Distributed('{cluster}', leadpulse, lead_scores_local, cityHash64(lead_id));

CREATE TABLE IF NOT EXISTS leadpulse.stage_transitions_local ON CLUSTER '{cluster}'
(
    transition_id     String,
    lead_id           String,
    from_stage        LowCardinality(String),
    to_stage          LowCardinality(String),
    reason            LowCardinality(String),
    trigger_event_id  String,
    score             Float64,
    occurred_at       DateTime64(3, 'UTC'),
    topic             LowCardinality(String),
    partition         UInt32,
    offset            UInt64,
    inserted_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leadpulse/stage_transitions', '{replica}')
ORDER BY (lead_id, transition_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.stage_transitions ON CLUSTER '{cluster}' AS leadpulse.stage_transitions_local
ENGINE = Distributed('{cluster}', leadpulse, stage_transitions_local, cityHash64(lead_id));

CREATE TABLE IF NOT EXISTS leadpulse.sla_events_local ON CLUSTER '{cluster}'
(
    timeout_id   String,
    lead_id      String,
    sla          LowCardinality(String),
    level        LowCardinality(String),
    started_at   DateTime64(3, 'UTC'),
    due_at       DateTime64(3, 'UTC'),
    owner        Nullable(String),
    fired_at     DateTime64(3, 'UTC'),
    notify       Array(String),
    topic        LowCardinality(String),
    partition    UInt32,
    offset       UInt64,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leadpulse/sla_events', '{replica}')
ORDER BY (sla, lead_id, timeout_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.sla_events ON CLUSTER '{cluster}' AS leadpulse.sla_events_local
ENGINE = Distributed('{cluster}', leadpulse, sla_events_local, cityHash64(lead_id));

CREATE TABLE IF NOT EXISTS leadpulse.hot_leads_local ON CLUSTER '{cluster}'
(
    notification_id  String,
    lead_id          String,
    score            Float64,
    fit              Float64,
    behaviour        Float64,
    reason           LowCardinality(String),
    became_hot_at    DateTime64(3, 'UTC'),
    sla_due_at       Nullable(DateTime64(3, 'UTC')),
    owner            Nullable(String),
    signals          String COMMENT 'JSON array of the top contributing signals',
    email_hash       Nullable(String) COMMENT 'HMAC-SHA256(email_hash_key, lower(trim(email))), hex',
    company_name     Nullable(String),
    company_domain   Nullable(String),
    company_size     Nullable(Int32),
    industry         LowCardinality(Nullable(String)),
    job_title        Nullable(String),
    country          LowCardinality(Nullable(String)),
    account_score    Nullable(Float64),
    topic            LowCardinality(String),
    partition        UInt32,
    offset           UInt64,
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leadpulse/hot_leads', '{replica}')
ORDER BY (lead_id, notification_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.hot_leads ON CLUSTER '{cluster}' AS leadpulse.hot_leads_local
ENGINE = Distributed('{cluster}', leadpulse, hot_leads_local, cityHash64(lead_id));

CREATE TABLE IF NOT EXISTS leadpulse.leads_local ON CLUSTER '{cluster}'
(
    event_id        String,
    lead_id         String,
    anonymous_id    Nullable(String),
    event_time      DateTime64(3, 'UTC'),
    source          LowCardinality(String),
    received_at     Nullable(DateTime64(3, 'UTC')),
    email_hash      Nullable(String) COMMENT 'HMAC-SHA256(email_hash_key, lower(trim(email))), hex',
    company_domain  Nullable(String),
    company_name    Nullable(String),
    company_size    Nullable(Int32),
    industry        LowCardinality(Nullable(String)),
    job_title       Nullable(String),
    seniority       LowCardinality(Nullable(String)),
    country         LowCardinality(Nullable(String)),
    flags           Array(String),
    owner           Nullable(String),
    segment         LowCardinality(Nullable(String)),
    topic           LowCardinality(String),
    partition       UInt32,
    offset          UInt64,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leadpulse/leads', '{replica}')
ORDER BY (lead_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.leads ON CLUSTER '{cluster}' AS leadpulse.leads_local
ENGINE = Distributed('{cluster}', leadpulse, leads_local, cityHash64(lead_id));

CREATE TABLE IF NOT EXISTS leadpulse.sales_activities_local ON CLUSTER '{cluster}'
(
    event_id     String,
    lead_id      String,
    event_time   DateTime64(3, 'UTC'),
    source       LowCardinality(String),
    received_at  Nullable(DateTime64(3, 'UTC')),
    activity     LowCardinality(String),
    owner        Nullable(String),
    reason       Nullable(String),
    amount       Nullable(Float64),
    topic        LowCardinality(String),
    partition    UInt32,
    offset       UInt64,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leadpulse/sales_activities', '{replica}')
ORDER BY (lead_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.sales_activities ON CLUSTER '{cluster}' AS leadpulse.sales_activities_local
ENGINE = Distributed('{cluster}', leadpulse, sales_activities_local, cityHash64(lead_id));

CREATE TABLE IF NOT EXISTS leadpulse.content_local ON CLUSTER '{cluster}'
(
    content_id      String,
    title           String,
    content_type    LowCardinality(String),
    funnel_stage    LowCardinality(String),
    url             Nullable(String),
    published_date  Date,
    updated_date    Date,
    loaded_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leadpulse/content', '{replica}', loaded_at)
ORDER BY content_id
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.content ON CLUSTER '{cluster}' AS leadpulse.content_local
ENGINE = Distributed('{cluster}', leadpulse, content_local, cityHash64(content_id));

CREATE TABLE IF NOT EXISTS leadpulse.content_usage_daily_local ON CLUSTER '{cluster}'
(
    day           Date,
    content_id    String,
    event_type    LowCardinality(String),
    events        SimpleAggregateFunction(sum, UInt64),
    dwell_ms      SimpleAggregateFunction(sum, Int64),
    leads         AggregateFunction(uniq, String),
    visitors      AggregateFunction(uniq, String)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/leadpulse/content_usage_daily', '{replica}')
ORDER BY (day, content_id, event_type)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.content_usage_daily ON CLUSTER '{cluster}' AS leadpulse.content_usage_daily_local
ENGINE = Distributed('{cluster}', leadpulse, content_usage_daily_local, cityHash64(content_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS leadpulse.content_usage_daily_mv ON CLUSTER '{cluster}' TO leadpulse.content_usage_daily_local AS
SELECT
    toDate(event_time) AS day,
    ifNull(content_id, '') AS content_id,
    event_type,
    toUInt64(count()) AS events,
    toInt64(sum(ifNull(dwell_ms, 0))) AS dwell_ms,
    uniqStateIf(assumeNotNull(lead_id), lead_id IS NOT NULL) AS leads,
    uniqState(assumeNotNull(coalesce(lead_id, anonymous_id, ''))) AS visitors
FROM leadpulse.events_local
WHERE content_id != ''
GROUP BY day, content_id, event_type;

CREATE TABLE IF NOT EXISTS leadpulse.funnel_daily_local ON CLUSTER '{cluster}'
(
    day          Date,
    from_stage   LowCardinality(String),
    to_stage     LowCardinality(String),
    transitions  UInt64,
    recycles     UInt64
)
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/leadpulse/funnel_daily', '{replica}')
ORDER BY (day, from_stage, to_stage)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.funnel_daily ON CLUSTER '{cluster}' AS leadpulse.funnel_daily_local
ENGINE = Distributed('{cluster}', leadpulse, funnel_daily_local, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS leadpulse.funnel_daily_mv ON CLUSTER '{cluster}' TO leadpulse.funnel_daily_local AS
SELECT
    toDate(occurred_at) AS day,
    from_stage,
    to_stage,
    toUInt64(count()) AS transitions,
    toUInt64(countIf(startsWith(reason, 'recycled'))) AS recycles
FROM leadpulse.stage_transitions_local
GROUP BY day, from_stage, to_stage;

-- Erasures applied by `leadpulse forget` (sinks/migrations/007_erasures.sql). On a cluster, forget runs its
-- ALTER ... DELETE on the <name>_local tables ON CLUSTER (a Distributed table cannot mutate) and records
-- the erasure here through the Distributed table.
CREATE TABLE IF NOT EXISTS leadpulse.erasures_local ON CLUSTER '{cluster}'
(
    erasure_id    String,
    lead_id       String,
    requested_at  DateTime64(3, 'UTC'),
    erased_at     DateTime64(3, 'UTC'),
    rows_deleted  Map(String, UInt64) COMMENT 'rows deleted per table; daily views: keys recomputed',
    applied_by    LowCardinality(String) COMMENT 'cli (forget opened ClickHouse itself) or sink (embedded owner)'
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leadpulse/erasures', '{replica}')
ORDER BY (lead_id, erasure_id, requested_at, erased_at)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.erasures ON CLUSTER '{cluster}' AS leadpulse.erasures_local
ENGINE = Distributed('{cluster}', leadpulse, erasures_local, cityHash64(lead_id));

-- Account roll-up (sinks/migrations/006_account_scores.sql).
CREATE TABLE IF NOT EXISTS leadpulse.account_scores_local ON CLUSTER '{cluster}'
(
    domain       String,
    score        Float64,
    leads        UInt32,
    top_leads    String COMMENT 'JSON array of {lead_id, score}, best first',
    as_of        DateTime64(3, 'UTC'),
    computed_at  DateTime64(3, 'UTC'),
    topic        LowCardinality(String),
    partition    UInt32,
    offset       UInt64,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leadpulse/account_scores', '{replica}')
ORDER BY (domain, computed_at)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.account_scores ON CLUSTER '{cluster}' AS leadpulse.account_scores_local
ENGINE = Distributed('{cluster}', leadpulse, account_scores_local, cityHash64(domain));

CREATE VIEW IF NOT EXISTS leadpulse.account_scores_latest ON CLUSTER '{cluster}' AS
SELECT
    domain,
    argMax(score, computed_at)     AS score,
    argMax(leads, computed_at)     AS leads,
    argMax(top_leads, computed_at) AS top_leads,
    max(as_of)                     AS as_of
FROM leadpulse.account_scores
GROUP BY domain;

-- Upgrades: sinks/migrations 008 onwards add columns with ALTER; the same here, local table and Distributed
-- table alike (IF NOT EXISTS: safe to run this whole file again on a cluster set up before them).
-- 008_page_views.sql
ALTER TABLE leadpulse.events_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS page_view_id Nullable(String) AFTER channel;
ALTER TABLE leadpulse.events ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS page_view_id Nullable(String) AFTER channel;
