"""Migrations create the contract tables on embedded ClickHouse, apply in order, and re-run as no-ops."""

from __future__ import annotations

from collections.abc import Iterator

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from sinks.migrate import discover, migrate, split_statements

pytestmark = pytest.mark.integration

CONTRACT_TABLES = {"events", "lead_scores", "stage_transitions", "sla_events", "hot_leads", "content"}


@pytest.fixture(scope="module")
def client(clickhouse_dsn: str) -> Iterator[Client]:
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    yield client
    client.close()


def test_migrations_apply_twice_without_error_and_second_run_applies_nothing(client: Client) -> None:
    migrate(client)  # first run in this session (or already applied by another module)
    assert migrate(client) == []
    recorded = client.query("SELECT version, name FROM leadpulse.schema_migrations FINAL ORDER BY version")
    assert [f"{v:03d}_{n}" for v, n in recorded.result_rows] == [
        f"{m.version:03d}_{m.name}" for m in discover()
    ]


def test_contract_tables_and_views_exist_in_database_leadpulse(client: Client) -> None:
    migrate(client)
    tables = {row[0] for row in client.query("SHOW TABLES FROM leadpulse").result_rows}
    assert CONTRACT_TABLES | {"leads", "sales_activities", "content_usage_daily", "funnel_daily"} <= tables


def test_every_table_and_view_target_sets_a_deduplication_window(client: Client) -> None:
    migrate(client)
    rows = client.query(
        "SELECT name, engine, create_table_query FROM system.tables "
        "WHERE database = 'leadpulse' AND engine LIKE '%MergeTree%'"
    ).result_rows
    assert rows
    for name, _engine, ddl in rows:
        assert "non_replicated_deduplication_window" in ddl, name


def test_common_ddl_is_portable(client: Client) -> None:
    for migration in discover():
        sql = migration.sql.upper()
        for forbidden in ("ON CLUSTER", "= REPLICATED", "CREATE USER", "GRANT", "ENGINE = KAFKA", "S3("):
            assert forbidden not in sql, (migration.path.name, forbidden)
        for statement in split_statements(migration.sql):
            if statement.upper().startswith("CREATE TABLE") or "MATERIALIZED VIEW" in statement.upper():
                assert "leadpulse." in statement.split("(")[0], (migration.path.name, statement[:60])
