"""Read a content-catalogue file (``.csv``, ``.json``, ``.jsonl``) into entries: one dict per item, keyed by
the file's own column names.

Why one reader: ``leadpulse content load`` (``sinks/content_catalogue.py``) and ``leadpulse generate
--catalogue`` (``streams/traffic_catalogue.py``) take the same files. They had a reader each, and only
``content load``'s named the line of a JSON syntax error, a file that is not UTF-8 or a CSV row with more or
fewer fields than its header; the generator printed a bare decoder message without the file name, took the
row shifted by an unquoted comma, and crashed on a JSON entry that was not an object. This module knows files
only; what the columns mean stays with each caller. It lives in ``streams/`` because ``streams`` imports
nothing from ``sinks``, while ``sinks`` may import from ``streams``.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: The catalogue files both commands read (and so the ones ``generate --content-out`` writes).
CATALOGUE_SUFFIXES = (".csv", ".json", ".jsonl")


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
