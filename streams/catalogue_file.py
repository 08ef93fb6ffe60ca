"""Read a content-catalogue file (``.csv``, ``.json``, ``.jsonl``) into entries: one dict per item, keyed by
the file's own column names.

Why one reader: ``leadpulse content load`` (``sinks/content_catalogue.py``) and ``leadpulse generate
--catalogue`` (``streams/traffic_catalogue.py``) take the same files. They had a reader each, and only
``content load``'s named the line of a JSON syntax error, a file that is not UTF-8 or a CSV row with more or
fewer fields than its header; the generator printed a bare decoder message without the file name, took the
row shifted by an unquoted comma, and crashed on a JSON entry that was not an object. ``read_entries`` knows
files only. It lives in ``streams/`` because ``streams`` imports nothing from ``sinks``, while ``sinks`` may
import from ``streams``; the funnel stages come from ``agents.stages``, their one declaration.

Why one check of the columns too (``check_entries``): ``generate --catalogue`` had a copy of ``content
load``'s column rules that had drifted. It took any funnel stage (``hot``, ``disqualified``), read
``2026-01-01junk`` as 2026-01-01 (the first ten characters), accepted an update before publication and an
entry without a title, and refused the spellings ``funnel stage``, ``published_at`` and ``updated_at`` that
``content load`` takes: a file one command took, the other refused, each with messages of its own. The
generator's own columns (roles, page_category, ...) stay with it (``streams/traffic_catalogue.py``).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.stages import FUNNEL_PATH

#: The catalogue files both commands read (and so the ones ``generate --content-out`` writes).
CATALOGUE_SUFFIXES = (".csv", ".json", ".jsonl")


#: An invalid entry: (entry number, field, problem); entry 0 is the file as a whole.
Problem = tuple[int, str, str]


class CatalogueError(Exception):
    """The file or its entries are invalid; ``problems`` lists (entry number, field, problem). Entry 0 is the
    file as a whole (not readable, not UTF-8, not JSON/CSV), whose field then names the line."""

    def __init__(self, path: str, problems: list[tuple[int, str, str]]) -> None:
        self.problems = problems
        shown = "; ".join(
            f"{f'entry {n} ' if n else ''}{field}: {problem}" for n, field, problem in problems[:10]
        )
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__(
            f"{path}: {len(problems)} invalid entr{'y' if len(problems) == 1 else 'ies'}: {shown}{more}"
        )


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of a catalogue file: a CSV's rows by its header, a JSON list (or ``{"content": [...]}``),
    or a JSONL file's lines. Anything unreadable is a CatalogueError naming the file and the line or entry,
    not a traceback. A UTF-8 byte-order mark (spreadsheet exports write one) is skipped."""
    where = str(path)
    suffix = path.suffix.lower()
    if suffix not in CATALOGUE_SUFFIXES:
        expected = ", ".join(CATALOGUE_SUFFIXES[:-1]) + f" or {CATALOGUE_SUFFIXES[-1]}"
        raise CatalogueError(where, [(0, "<file>", f"expected a {expected} file")])
    text = _text(path)
    if suffix == ".csv":
        items = _csv_entries(where, text)
    elif suffix == ".jsonl":
        items = _jsonl_items(where, text)
    else:
        items = _json_items(where, text)
    problems = [
        (number, "<entry>", f"expected an object with the columns, got {type(item).__name__}")
        for number, item in enumerate(items, start=1)
        if not isinstance(item, dict)
    ]
    if problems:
        raise CatalogueError(where, problems)
    return items


def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogueError(str(path), [(0, "<file>", f"cannot read it: {exc.strerror or exc}")]) from None
    skipped = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skipped:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skipped + exc.start
        line = data.count(b"\n", 0, at) + 1
        problem = f"not UTF-8 (byte {at}) on line {line}: save the file as UTF-8"
        raise CatalogueError(str(path), [(0, "<file>", problem)]) from None


def _json_items(where: str, text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"not JSON: {exc.msg} at column {exc.colno}"
        raise CatalogueError(where, [(0, f"line {exc.lineno}", problem)]) from None
    items = data.get("content", data) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise CatalogueError(where, [(0, "<file>", 'expected a JSON list or {"content": [...]}')])
    return items


def _jsonl_items(where: str, text: str) -> list[Any]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                problem = f"not JSON: {exc.msg} at column {exc.colno}"
                raise CatalogueError(where, [(0, f"line {number}", problem)]) from None
    return items


def _csv_entries(where: str, text: str) -> list[Any]:
    """Rows as dicts by the header. A row with more or fewer fields than the header is an error: a comma in
    an unquoted title shifted every later column into the wrong one, and only a lucky check noticed. The
    reader is strict about quotes: leniently, a value with an opening quote and no closing one swallowed
    every later line into that one value, and the file loaded with its last items missing."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = [1]  # the line the row being read starts on: an unclosed quote fails only at the end of the file

    def rows() -> Iterator[list[str]]:
        while True:
            start[0] = reader.line_num + 1
            try:
                yield next(reader)
            except StopIteration:
                return

    try:
        return _by_header(where, rows())
    except csv.Error as exc:
        hint = next((h for cause, h in _CSV_HINTS.items() if cause in str(exc)), "")
        raise CatalogueError(where, [(0, f"line {start[0]}", f"not CSV: {exc}{hint}")]) from None


_CSV_HINTS = {  # csv's message -> what to do
    "end of data": " (a value opens a quote that is never closed)",
    "expected after '\"'": ' (a quote inside a value? quote the value, doubling the quote: "a ""b"" c")',
    "field limit": " (a value opens a quote that is never closed?)",
}


def _by_header(where: str, rows: Iterable[list[str]]) -> list[Any]:
    header: list[str] | None = None
    entries: list[Any] = []
    problems: list[tuple[int, str, str]] = []
    for fields in rows:
        if not any(field.strip() for field in fields):
            continue  # blank line
        if header is None:
            header = fields
            continue
        number = len(entries) + 1
        if len(fields) != len(header):
            hint = " (a comma in an unquoted value? quote it)" if len(fields) > len(header) else ""
            problem = f"has {len(fields)} fields, the header {len(header)}{hint}"
            problems.append((number, "<row>", problem))
        entries.append(dict(zip(header, fields, strict=False)))
    if problems:
        raise CatalogueError(where, problems)
    return entries


# --- the columns ----------------------------------------------------------------------------------

STAGES = FUNNEL_PATH  # a content item serves a funnel stage; "disqualified" is none
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
#: The columns every entry needs (``content load`` stores them); a caller may need more (``check_entries``).
REQUIRED = ("content_id", "title", "content_type", "funnel_stage", "published_date")


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One valid entry, by the columns ``content load`` stores; ``number`` counts entries from 1 as errors
    do. ``updated`` is ``published`` when the file gives none."""

    number: int
    content_id: str
    title: str
    content_type: str
    funnel_stage: str
    url: Any
    published: dt.date
    updated: dt.date


def pick(entry: Mapping[str, Any], column: str) -> Any:
    """The entry's value for ``column`` under any of its spellings; None when absent or empty."""
    for name in ALIASES[column]:
        if name in entry and entry[name] not in (None, ""):
            return entry[name]
    return None


def parse_date(value: Any) -> dt.date:
    """A YYYY-MM-DD date, or the date of an ISO-8601 date-time (CMS exports carry times). Anything after the
    date must be a time: ``2026-01-01junk`` was loaded as 2026-01-01 (CLI audit). ValueError otherwise."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    if len(text) == 10:
        return dt.date.fromisoformat(text)
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).date()


def check_entries(
    entries: Iterable[Mapping[str, Any]],
    required: tuple[str, ...] = (),
    other_columns: tuple[str, ...] = (),
) -> tuple[list[CatalogueEntry], list[Problem]]:
    """The catalogue rules both commands apply: the valid entries, and (entry, column, problem) for every
    invalid one, columns named as the docs spell them. Each entry needs the ``REQUIRED`` columns and the
    caller's ``required`` ones (``ALIASES`` keys); a funnel stage of ``STAGES``; whole dates, ``updated`` not
    before ``published``. Next to a missing column, a column that is neither a known spelling nor one of the
    caller's ``other_columns`` is named as unknown (once per file): probably the missing one misspelt."""
    valid: list[CatalogueEntry] = []
    problems: list[Problem] = []
    unknown_seen: set[str] = set()
    known = KNOWN | set(other_columns)
    names = ", ".join([*DOCUMENTED.values(), *other_columns])
    needed = REQUIRED + tuple(c for c in required if c not in REQUIRED)
    for number, entry in enumerate(entries, start=1):
        found = len(problems)
        values = {column: pick(entry, column) for column in ALIASES}
        missing = [c for c in ALIASES if c in needed and values[c] is None]
        if missing:  # extra columns are fine; next to a missing one they are probably its misspelling
            for name in entry:
                if name not in known and name not in unknown_seen:
                    unknown_seen.add(name)
                    problems.append((number, str(name), f"unknown column (the columns are {names})"))
        problems += [(number, DOCUMENTED[column], "missing") for column in missing]
        stage = values["funnel_stage"]
        if stage is not None and str(stage) not in STAGES:
            problems.append((number, "funnel_stage", f"{stage!r} is not one of {', '.join(STAGES)}"))
        dates = {}
        for column in ("published_date", "updated_date"):
            if values[column] is not None:
                try:
                    dates[column] = parse_date(values[column])
                except ValueError:
                    problems.append(
                        (number, DOCUMENTED[column], f"{values[column]!r} is not a YYYY-MM-DD date")
                    )
        updated, published = dates.get("updated_date"), dates.get("published_date")
        if updated is not None and published is not None and updated < published:
            problem = f"{updated} is before published {published}"
            problems.append((number, DOCUMENTED["updated_date"], problem))
        if len(problems) > found or published is None:
            continue
        valid.append(
            CatalogueEntry(
                number,
                str(values["content_id"]),
                str(values["title"]),
                str(values["content_type"]),
                str(stage),
                values["url"],
                published,
                updated or published,
            )
        )
    return valid, problems
