"""deploy/clickhouse/cluster.sql is written by hand from sinks/migrations: this keeps the two from drifting.

No ClickHouse cluster runs here (and chDB cannot run ``ON CLUSTER``/``Replicated*``), so the check is on the
DDL text: every table a migration creates exists in the cluster layout as a replicated ``<name>_local`` table
with the same columns, constraints, engine family, ``PARTITION BY`` and ``ORDER BY``, plus a ``Distributed``
``<name>`` over it; every view and materialized view exists too (a materialized view writing to the local
table, so each shard aggregates its own rows).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = sorted((ROOT / "sinks" / "migrations").glob("*.sql"))
CLUSTER = ROOT / "deploy" / "clickhouse" / "cluster.sql"
CREATE = re.compile(
    r"CREATE (TABLE|MATERIALIZED VIEW|VIEW) IF NOT EXISTS leadpulse\.(\w+)(?: ON CLUSTER '\{cluster\}')?"
    r"(.*?);\s*(?=CREATE|ALTER|\Z)",
    re.S,
)
ADD_COLUMN = re.compile(
    r"ALTER TABLE leadpulse\.(\w+)(?: ON CLUSTER '\{cluster\}')? ADD COLUMN IF NOT EXISTS ([^;]+);", re.S
)


def _statements(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (kind, the rest of the statement), comments dropped."""
    text = "\n".join(line.split("--")[0] for line in path.read_text().splitlines())
    return {m.group(2): (m.group(1), m.group(3)) for m in CREATE.finditer(text)}


def _added_columns(path: Path) -> set[tuple[str, str]]:
    """(table, column definition) of each ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``, comments dropped."""
    text = "\n".join(line.split("--")[0] for line in path.read_text().splitlines())
    return {(m.group(1), " ".join(m.group(2).split())) for m in ADD_COLUMN.finditer(text)}


def _columns(body: str) -> list[str]:
    """The column and constraint lines between the outer parentheses, whitespace-normalised."""
    inner = body[body.index("(") + 1 : body.index("\nENGINE")]
    inner = inner[: inner.rindex(")")]
    return [" ".join(line.split()).rstrip(",") for line in inner.splitlines() if line.strip()]


def _clause(body: str, name: str) -> str | None:
    found = re.search(rf"^{name} (.+)$", body, re.M)
    return " ".join(found.group(1).split()) if found else None


def _engine(body: str) -> str:
    found = re.search(r"ENGINE = (\w+)", body)
    assert found, body
    return found.group(1)


MIGRATED = {name: spec for path in MIGRATIONS for name, spec in _statements(path).items()}
CLUSTERED = _statements(CLUSTER)


def test_the_migrations_create_what_this_test_expects() -> None:
    assert {"events", "lead_scores", "account_scores", "erasures", "funnel_daily_mv"} <= set(MIGRATED)


@pytest.mark.parametrize("name", sorted(n for n, (kind, _) in MIGRATED.items() if kind == "TABLE"))
def test_every_table_is_a_replicated_local_table_with_the_same_definition_and_a_distributed_one(
    name: str,
) -> None:
    body = MIGRATED[name][1]
    assert f"{name}_local" in CLUSTERED, f"cluster.sql lacks leadpulse.{name}_local"
    local = CLUSTERED[f"{name}_local"][1]
    assert _columns(local) == _columns(body), name
    assert _engine(local) == "Replicated" + _engine(body), name
    for clause in ("PARTITION BY", "ORDER BY", "PRIMARY KEY", "TTL"):
        assert _clause(local, clause) == _clause(body, clause), (name, clause)
    assert name in CLUSTERED, f"cluster.sql lacks the Distributed leadpulse.{name}"
    distributed = CLUSTERED[name][1]
    assert (
        f"AS leadpulse.{name}_local" in distributed
        and f"Distributed('{{cluster}}', leadpulse, {name}_local" in (" ".join(distributed.split()))
    ), name


@pytest.mark.parametrize("name", sorted(n for n, (kind, _) in MIGRATED.items() if kind != "TABLE"))
def test_every_view_exists_in_the_cluster_layout(name: str) -> None:
    assert name in CLUSTERED, f"cluster.sql lacks leadpulse.{name}"
    kind, body = MIGRATED[name]
    assert CLUSTERED[name][0] == kind
    target = re.search(r"TO leadpulse\.(\w+)", body)
    if target:  # a materialized view: into the shard's own local table
        assert f"TO leadpulse.{target.group(1)}_local" in CLUSTERED[name][1], name


ADDED = {added for path in MIGRATIONS for added in _added_columns(path)}


def test_the_migrations_add_what_this_test_expects() -> None:
    assert ("events", "page_view_id Nullable(String) AFTER channel") in ADDED


@pytest.mark.parametrize(("table", "column"), sorted(ADDED))
def test_every_column_a_migration_adds_is_added_to_the_local_and_the_distributed_table(
    table: str, column: str
) -> None:
    clustered = _added_columns(CLUSTER)
    assert (f"{table}_local", column) in clustered, f"cluster.sql does not add {column} to {table}_local"
    assert (table, column) in clustered, f"cluster.sql does not add {column} to the Distributed {table}"
