"""Load the content catalogue (``leadpulse content load FILE.csv|json``) into ``leadpulse.content``.

Why validate everything before inserting: a catalogue is small and hand-edited; one bad date should be
reported with its line and field, not half-load the file. Reloading an item replaces it (ReplacingMergeTree
on content_id, latest ``loaded_at`` wins).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from streams.catalogue_file import CatalogueError as CatalogueError
from streams.catalogue_file import check_entries, read_entries

COLUMNS = (
    "content_id",
    "title",
    "content_type",
    "funnel_stage",
    "url",
    "published_date",
    "updated_date",
    "loaded_at",
)


def parse_entries(
    entries: Iterable[Mapping[str, Any]], path: str = "<input>", loaded_at_ms: int | None = None
) -> list[tuple[Any, ...]]:
    """Rows for ``leadpulse.content``; raises CatalogueError naming every bad entry and field. The checks are
    ``streams.catalogue_file.check_entries``, which ``generate --catalogue`` applies too."""
    loaded = loaded_at_ms if loaded_at_ms is not None else int(time.time() * 1000)
    valid, problems = check_entries(entries)
    if problems:
        raise CatalogueError(path, problems)
    return [
        (e.content_id, e.title, e.content_type, e.funnel_stage, e.url, e.published, e.updated, loaded)
        for e in valid
    ]


# `content load` reads files with the reader `generate --catalogue` shares (streams/catalogue_file.py)
read_file = read_entries


def load_catalogue(client: Client, path: Path) -> int:
    """Validate and insert a catalogue file; returns the number of items loaded."""
    return load_entries(client, read_file(path), str(path))


def load_entries(client: Client, entries: list[dict[str, Any]], source: str) -> int:
    """Validate and insert catalogue entries (a file's, or posted to a sink); the number loaded."""
    rows = parse_entries(entries, source)
    if rows:
        client.insert("leadpulse.content", rows, column_names=list(COLUMNS), settings={"async_insert": 0})
    return len(rows)
