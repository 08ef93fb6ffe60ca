-- Users and roles for a ClickHouse server or cluster (not for embedded chDB, which has no users).
-- Passwords come from your secret store; never commit them. Apply with a privileged account.

-- Analysts: read every leadpulse table and view, nothing else, no writes, no DDL; bounded queries.
CREATE ROLE IF NOT EXISTS leadpulse_analyst ON CLUSTER '{cluster}';
GRANT SELECT ON leadpulse.* TO leadpulse_analyst ON CLUSTER '{cluster}';
CREATE SETTINGS PROFILE IF NOT EXISTS leadpulse_analyst_profile ON CLUSTER '{cluster}'
    SETTINGS readonly = 2, max_execution_time = 120, max_memory_usage = 8000000000
    TO leadpulse_analyst;
CREATE USER IF NOT EXISTS analyst ON CLUSTER '{cluster}'
    IDENTIFIED WITH sha256_password BY 'CHANGE-ME' DEFAULT ROLE leadpulse_analyst;

-- Grafana: read every leadpulse table, nothing else (docker-compose.yml's grafana user is
-- deploy/clickhouse/users.d/grafana.xml, the same rules). readonly = 1 except max_execution_time, which the
-- grafana-clickhouse-datasource plugin sends with every query (its query timeout): readonly = 2 would let any
-- Grafana editor lift every limit here. Never give Grafana the sink's writer: a panel runs whatever SQL an
-- editor types.
CREATE SETTINGS PROFILE IF NOT EXISTS leadpulse_grafana_profile ON CLUSTER '{cluster}'
    SETTINGS readonly = 1, max_execution_time = 60 MAX 120 CHANGEABLE_IN_READONLY,
    max_memory_usage = 4000000000;
CREATE USER IF NOT EXISTS grafana ON CLUSTER '{cluster}'
    IDENTIFIED WITH sha256_password BY 'CHANGE-ME' SETTINGS PROFILE 'leadpulse_grafana_profile';
GRANT SELECT ON leadpulse.* TO grafana ON CLUSTER '{cluster}';

-- The sink: insert into the sink tables, read them back (resume positions), run migrations.
CREATE ROLE IF NOT EXISTS leadpulse_sink ON CLUSTER '{cluster}';
GRANT SELECT, INSERT ON leadpulse.* TO leadpulse_sink ON CLUSTER '{cluster}';
GRANT CREATE TABLE, CREATE VIEW, CREATE DATABASE, TRUNCATE, ALTER ON leadpulse.* TO leadpulse_sink
    ON CLUSTER '{cluster}';
CREATE SETTINGS PROFILE IF NOT EXISTS leadpulse_sink_profile ON CLUSTER '{cluster}'
    SETTINGS insert_distributed_sync = 1, async_insert = 0 TO leadpulse_sink;
CREATE USER IF NOT EXISTS leadpulse_sink ON CLUSTER '{cluster}'
    IDENTIFIED WITH sha256_password BY 'CHANGE-ME' DEFAULT ROLE leadpulse_sink;
-- Point the sink at it: LEADPULSE_CLICKHOUSE_USER=leadpulse_sink LEADPULSE_CLICKHOUSE_PASSWORD=...
