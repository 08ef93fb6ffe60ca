"""Versioned, ordered, idempotent ClickHouse migrations from ``sinks/migrations/NNN_name.sql``.

Why our own runner: a dozen SQL files do not justify a migration framework, and the two properties that
matter are easy to state and test: files apply in version order, each at most once (recorded in
``leadpulse.schema_migrations``), and every statement is ``IF NOT EXISTS`` so that a run interrupted between
a statement and its record re-applies safely.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

BOOTSTRAP = (
    "CREATE DATABASE IF NOT EXISTS leadpulse",
    """CREATE TABLE IF NOT EXISTS leadpulse.schema_migrations
    (
        version     UInt32,
        name        String,
        checksum    String,
        applied_at  DateTime64(3, 'UTC') DEFAULT now64(3)
    )
    ENGINE = ReplacingMergeTree
    ORDER BY version
    SETTINGS non_replicated_deduplication_window = 1000""",
)


class MigrationError(Exception):
    """A migration file is misnamed or one of its statements failed; the message names file and statement."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self) -> list[str]:
        return split_statements(self.sql)


def split_statements(sql: str) -> list[str]:
    """Statements of a file: ``--`` comment lines dropped, split on ``;`` at the end of a line."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [part.strip() for part in parts if part.strip()]


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files must be named NNN_lower_snake.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migration files share a version number: {versions}")
    return migrations


def applied_versions(client: Client) -> set[int]:
    result = client.query("SELECT DISTINCT version FROM leadpulse.schema_migrations")
    return {int(row[0]) for row in result.result_rows}


def migrate(client: Client, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet recorded, in version order; returns the names applied (``NNN_name``)."""
    for statement in BOOTSTRAP:
        client.command(statement)
    done = applied_versions(client)
    applied = []
    for migration in discover(directory):
        if migration.version in done:
            continue
        for number, statement in enumerate(migration.statements(), start=1):
            try:
                client.command(statement)
            except Exception as exc:
                first_line = statement.splitlines()[0][:80]
                raise MigrationError(
                    f"{migration.path.name}, statement {number} ({first_line!r}): {type(exc).__name__}: {exc}"
                ) from exc
        client.insert(
            "leadpulse.schema_migrations",
            [(migration.version, migration.name, migration.checksum)],
            column_names=["version", "name", "checksum"],
        )
        applied.append(f"{migration.version:03d}_{migration.name}")
    return applied
