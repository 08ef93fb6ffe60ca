-- The content catalogue, loaded by `leadpulse content load FILE.csv|json`. A reload of an item replaces it
-- (ReplacingMergeTree on content_id, latest loaded_at wins; read with FINAL).
-- url links web visits and email clicks to an item (content_view/download events carry content_id).
CREATE TABLE IF NOT EXISTS leadpulse.content
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
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY content_id
SETTINGS non_replicated_deduplication_window = 1000;
