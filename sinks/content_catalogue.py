"""Load the content catalogue (``leadpulse content load FILE.csv|json``) into ``leadpulse.content``.

Why validate everything before inserting: a catalogue is small and hand-edited; one bad date should be
reported with its line and field, not half-load the file. Reloading an item replaces it (ReplacingMergeTree
on content_id, latest ``loaded_at`` wins).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from agents.stages import FUNNEL_PATH
from streams.catalogue_file import CatalogueError as CatalogueError
from streams.catalogue_file import read_entries

STAGES = FUNNEL_PATH  # a content item serves a funnel stage; "disqualified" is none
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
# Accepted spellings of each column in a file (DESIGN §7 says "id, title, type, funnel stage, ...").
ALIASES = {
    "content_id": ("content_id", "id"),
    "title": ("title",),
    "content_type": ("content_type", "type"),
    "funnel_stage": ("funnel_stage", "stage", "funnel stage"),
    "url": ("url",),
    "published_date": ("published_date", "published", "published_at"),
    "updated_date": ("updated_date", "updated", "updated_at"),
}

# The names the docs use (docs/clickhouse.md, docs/traffic.md): errors speak the file's vocabulary.
DOCUMENTED = {
    "content_id": "id",
    "title": "title",
    "content_type": "type",
    "funnel_stage": "funnel_stage",
    "url": "url",
    "published_date": "published",
    "updated_date": "updated",
}
KNOWN = frozenset(name for names in ALIASES.values() for name in names)


def _pick(entry: Mapping[str, Any], column: str) -> Any:
    for name in ALIASES[column]:
        if name in entry and entry[name] not in (None, ""):
            return entry[name]
    return None


def _date(value: Any) -> dt.date:
    """A YYYY-MM-DD date, or the date of an ISO-8601 date-time (CMS exports carry times). Anything after the
    date must be a time: ``2026-01-01junk`` was loaded as 2026-01-01 (CLI audit)."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    if len(text) == 10:
        return dt.date.fromisoformat(text)
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).date()


def parse_entries(
    entries: Iterable[Mapping[str, Any]], path: str = "<input>", loaded_at_ms: int | None = None
) -> list[tuple[Any, ...]]:
    """Rows for ``leadpulse.content``; raises CatalogueError naming every bad entry and field."""
    loaded = loaded_at_ms if loaded_at_ms is not None else int(time.time() * 1000)
    rows, problems = [], []
    unknown_seen: set[str] = set()
    documented = ", ".join(DOCUMENTED.values())
    for number, entry in enumerate(entries, start=1):
        values = {column: _pick(entry, column) for column in ALIASES}
        missing = [
            c
            for c in ("content_id", "title", "content_type", "funnel_stage", "published_date")
            if values[c] is None
        ]
        if missing:  # extra columns are fine; next to a missing one they are probably its misspelling
            for name in entry:
                if name not in KNOWN and name not in unknown_seen:
                    unknown_seen.add(name)
                    problems.append((number, str(name), f"unknown column (the columns are {documented})"))
        problems += [(number, DOCUMENTED[column], "missing") for column in missing]
        stage = values["funnel_stage"]
        if stage is not None and str(stage) not in STAGES:
            problems.append((number, "funnel_stage", f"{stage!r} is not one of {', '.join(STAGES)}"))
        dates = {}
        for column in ("published_date", "updated_date"):
            if values[column] is not None:
                try:
                    dates[column] = _date(values[column])
                except ValueError:
                    problems.append(
                        (number, DOCUMENTED[column], f"{values[column]!r} is not a YYYY-MM-DD date")
                    )
        updated, published = dates.get("updated_date"), dates.get("published_date")
        if updated is not None and published is not None and updated < published:
            problem = f"{updated} is before published {published}"
            problems.append((number, DOCUMENTED["updated_date"], problem))
        if problems and problems[-1][0] == number:
            continue
        published = dates["published_date"]
        rows.append(
            (
                str(values["content_id"]),
                str(values["title"]),
                str(values["content_type"]),
                str(stage),
                values["url"],
                published,
                dates.get("updated_date", published),
                loaded,
            )
        )
    if problems:
        raise CatalogueError(path, problems)
    return rows


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
