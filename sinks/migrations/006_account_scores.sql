-- Account roll-up (agents/account.py): one row per account per worker batch from accounts.scores.
-- History is kept (ORDER BY domain, computed_at); an exact replay of a record collapses under FINAL.
-- Latest per account: argMax(score, computed_at) GROUP BY domain (or the account_scores_latest view).

CREATE TABLE IF NOT EXISTS leadpulse.account_scores
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
ENGINE = ReplacingMergeTree
ORDER BY (domain, computed_at)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE VIEW IF NOT EXISTS leadpulse.account_scores_latest AS
SELECT
    domain,
    argMax(score, computed_at)     AS score,
    argMax(leads, computed_at)     AS leads,
    argMax(top_leads, computed_at) AS top_leads,
    max(as_of)                     AS as_of
FROM leadpulse.account_scores
GROUP BY domain;
