-- Erasures applied by `leadpulse forget` (sinks/erase.py): one row per application of an erasure request.
-- Holds ids and row counts only, never the lead's data: erasure_id and lead_id are what lets an operator
-- prove the request was carried out and lets the sink skip requests already applied when it re-reads the
-- erasure log at start. requested_at tells repeated requests for the same lead apart.
CREATE TABLE IF NOT EXISTS leadpulse.erasures
(
    erasure_id    String,
    lead_id       String,
    requested_at  DateTime64(3, 'UTC'),
    erased_at     DateTime64(3, 'UTC'),
    rows_deleted  Map(String, UInt64) COMMENT 'rows deleted per table; daily views: keys recomputed',
    applied_by    LowCardinality(String) COMMENT 'cli (forget opened ClickHouse itself) or sink (embedded owner)'
)
ENGINE = ReplacingMergeTree
ORDER BY (lead_id, erasure_id, requested_at, erased_at)
SETTINGS non_replicated_deduplication_window = 1000;
