"""Content catalogue files: errors name the entry and the column as the docs spell it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sinks.content_catalogue import CatalogueError, parse_entries, read_file

pytestmark = pytest.mark.unit

GOOD = {
    "id": "wp-1",
    "title": "Pricing guide",
    "type": "whitepaper",
    "funnel_stage": "mql",
    "published": "2026-01-31",
}


def test_a_misspelt_column_is_named_with_the_column_it_left_missing() -> None:
    entry = {k: v for k, v in GOOD.items() if k != "title"} | {"titel": "Pricing guide"}
    with pytest.raises(CatalogueError) as caught:
        parse_entries([entry, entry], path="c.csv")
    assert caught.value.problems == [
        (
            1,
            "titel",
            "unknown column (the columns are id, title, type, funnel_stage, url, published, updated)",
        ),
        (1, "title", "missing"),
        (2, "title", "missing"),  # the unknown column is reported once per file
    ]
    assert str(caught.value).startswith("c.csv: 3 invalid entries: entry 1 titel: unknown column")


def test_bad_values_are_named_by_the_documented_column() -> None:
    with pytest.raises(CatalogueError) as caught:
        parse_entries([GOOD | {"published": "31/01/2026", "funnel_stage": "hot"}])
    assert caught.value.problems == [
        (
            1,
            "funnel_stage",
            "'hot' is not one of awareness, lead, nurturing, mql, sal, opportunity, customer, expansion",
        ),
        (1, "published", "'31/01/2026' is not a YYYY-MM-DD date"),
    ]


def test_extra_columns_beside_complete_entries_are_accepted() -> None:
    rows = parse_entries([GOOD | {"owner": "marketing"}], loaded_at_ms=0)
    assert [row[:4] for row in rows] == [("wp-1", "Pricing guide", "whitepaper", "mql")]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("c.json", b'{"id":', "c.json: 1 invalid entry: line 1: not JSON: Expecting value at column 7"),
        ("c.jsonl", b"{}\nnot json\n", "c.jsonl: 1 invalid entry: line 2: not JSON: Expecting value"),
        ("c.csv", b"\xff\xfeid,title\n", "c.csv: 1 invalid entry: <file>: not UTF-8 (byte 0)"),
        ("c.json", b'[1, "x"]', "c.json: 2 invalid entries: entry 1 <entry>: expected an object with the"),
        ("c.txt", b"id\n", "c.txt: 1 invalid entry: <file>: expected a .csv, .json or .jsonl file"),
    ],
)
def test_an_unreadable_file_is_a_catalogue_error_naming_the_line(
    tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CatalogueError) as caught:
        read_file(path)
    assert str(caught.value).startswith(str(path.parent / expected)), str(caught.value)


def test_dates_are_read_whole_and_updated_is_not_before_published() -> None:
    """``2026-01-01junk`` loaded as 2026-01-01, and an update before publication was accepted (CLI audit)."""
    with pytest.raises(CatalogueError) as caught:
        parse_entries([GOOD | {"published": "2026-01-01junk"}, GOOD | {"updated": "2026-01-30"}])
    assert caught.value.problems == [
        (1, "published", "'2026-01-01junk' is not a YYYY-MM-DD date"),
        (2, "updated", "2026-01-30 is before published 2026-01-31"),
    ]
    [row] = parse_entries([GOOD | {"published": "2026-01-31T09:30:00Z", "updated": "2026-02-02"}])
    assert row[5:7] == (dt.date(2026, 1, 31), dt.date(2026, 2, 2))


def test_a_csv_row_with_more_or_fewer_fields_than_the_header_is_named(tmp_path: Path) -> None:
    """``Hello, world`` unquoted made the title ``Hello`` and shifted every later column by one."""
    path = tmp_path / "c.csv"
    path.write_text(
        "id,title,type,funnel_stage,published\n"
        "wp-1,Pricing guide,whitepaper,mql,2026-01-31\n"
        "\n"
        "wp-2,Hello, world,blog,awareness,2026-01-31\n"
        "wp-3,Short,blog\n"
        ",,,,\n",
        encoding="utf-8",
    )
    with pytest.raises(CatalogueError) as caught:
        read_file(path)
    assert caught.value.problems == [
        (2, "<row>", "has 6 fields, the header 5 (a comma in an unquoted value? quote it)"),
        (3, "<row>", "has 3 fields, the header 5"),
    ]
    path.write_text(
        'id,title,type,funnel_stage,published\nwp-2,"Hello, world",blog,awareness,2026-01-31\n,,,,\n'
    )
    assert [row[:2] for row in parse_entries(read_file(path), loaded_at_ms=0)] == [("wp-2", "Hello, world")]
