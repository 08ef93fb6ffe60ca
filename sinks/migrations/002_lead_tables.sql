-- Lead-level facts: the worker's outputs (scores, stage transitions, SLA timeouts, hot-lead notifications)
-- and two inputs the reports need beside events (identity/profile, sales activities).
-- Each output record carries a deterministic id; ReplacingMergeTree keyed by it drops replays under FINAL.
-- Emails are never stored: only email_hash, a keyed HMAC-SHA256 (DESIGN §10).

CREATE TABLE IF NOT EXISTS leadpulse.lead_scores
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
ENGINE = ReplacingMergeTree
ORDER BY (lead_id, as_of, trigger_event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.stage_transitions
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
ENGINE = ReplacingMergeTree
ORDER BY (lead_id, transition_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.sla_events
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
ENGINE = ReplacingMergeTree
ORDER BY (sla, lead_id, timeout_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.hot_leads
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
ENGINE = ReplacingMergeTree
ORDER BY (lead_id, notification_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.leads
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
ENGINE = ReplacingMergeTree
ORDER BY (lead_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS leadpulse.sales_activities
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
ENGINE = ReplacingMergeTree
ORDER BY (lead_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
