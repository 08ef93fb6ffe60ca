"""Fixtures the integration modules share (the session's broker and ClickHouse are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from sinks.migrate import migrate


@pytest.fixture(scope="module")
def ch(clickhouse_dsn: str) -> Iterator[Client]:
    """A client of the session's ClickHouse with the schema migrated, one per module (modules that need
    another client define their own ``ch``)."""
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    migrate(client)
    yield client
    client.close()
