"""One reader for content-catalogue files: ``generate --catalogue`` now refuses an unreadable file the way
``content load`` does, naming the file and the line or entry, and both read what spreadsheets write."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from leadpulse.commands import generate_cmds
from sinks.content_catalogue import CatalogueError, parse_entries, read_file
from streams.traffic_catalogue import read_catalogue_file

pytestmark = pytest.mark.unit

HEADER = "id,title,type,funnel_stage,url,published,updated\n"
ROW = "wp-{n},Item {n},blog,awareness,https://x.example/{n},2024-01-01,2024-02-01\n"


def generate(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    generate_cmds.register(app)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [  # before, each was a bare decoder message without the file, a traceback, or silently accepted
        ("c.json", b'{"id":', "c.json: 1 invalid entry: line 1: not JSON: Expecting value at column 7"),
        ("c.jsonl", b"{}\nnot json\n", "c.jsonl: 1 invalid entry: line 2: not JSON: Expecting value"),
        ("c.csv", b"id,title\nx,caf\xe9\n", "c.csv: 1 invalid entry: <file>: not UTF-8 (byte 14) on line 2"),
        ("c.json", b'[1, "x"]', "c.json: 2 invalid entries: entry 1 <entry>: expected an object with the"),
        (
            "c.csv",
            (HEADER + ROW.format(n=1).replace("\n", ",marketing\n")).encode(),
            "c.csv: 1 invalid entry: entry 1 <row>: has 8 fields, the header 7 (a comma in an unquoted",
        ),
    ],
)
def test_generate_refuses_an_unreadable_catalogue_naming_the_file_and_the_line_or_entry(
    tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    code, output = generate("--catalogue", str(path), "--out", str(tmp_path / "t.jsonl"))
    assert code == 2, output
    assert f"error: --catalogue {tmp_path / expected}" in " ".join(output.split()), output
    assert not (tmp_path / "t.jsonl").exists()


def test_generate_names_the_pool_a_catalogue_hides_instead_of_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(HEADER + ROW.format(n=1).replace("wp-1", "product-integrations"), encoding="utf-8")
    code, output = generate("--catalogue", str(path), "--out", str(tmp_path / "t.jsonl"))
    assert code == 2, output
    assert f"--catalogue {path}: no item serves the 'integration' pool" in " ".join(output.split())


def test_an_unclosed_quote_is_an_error_naming_its_line_not_a_swallowed_rest_of_the_file(
    tmp_path: Path,
) -> None:
    """Read leniently, the quote took every later line into the ``updated`` value: the generator kept
    2024-02-01 (its first ten characters) and silently lost wp-2 and wp-3."""
    path = tmp_path / "mine.csv"
    path.write_text(
        HEADER + ROW.format(n=1).replace(",2024-02-01", ',"2024-02-01') + ROW.format(n=2) + ROW.format(n=3),
        encoding="utf-8",
    )
    expected = "1 invalid entry: line 2: not CSV: unexpected end of data (a value opens a quote that is never"
    for read in (read_file, read_catalogue_file):
        with pytest.raises(CatalogueError, match=r"mine\.csv: " + expected.replace("(", r"\(")):
            read(path)


def test_a_quote_inside_an_unquoted_value_is_an_error_saying_how_to_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(HEADER + ROW.format(n=1).replace("Item 1", '"The best" item'), encoding="utf-8")
    with pytest.raises(CatalogueError) as caught:
        read_file(path)
    assert caught.value.problems == [
        (
            0,
            "line 2",
            """not CSV: ',' expected after '"' (a quote inside a value? quote the value, doubling the """
            """quote: "a ""b"" c")""",
        )
    ]
    path.write_text(HEADER + ROW.format(n=1).replace("Item 1", '"The ""best"" item"'), encoding="utf-8")
    assert [row[1] for row in parse_entries(read_file(path), loaded_at_ms=0)] == ['The "best" item']


def test_a_spreadsheet_csv_with_a_byte_order_mark_reads_in_both_commands(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a byte-order mark, which made the first column ``\\ufeffid``: every
    row's id was missing."""
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + ROW.format(n=1)).encode())
    assert [row[0] for row in parse_entries(read_file(path), loaded_at_ms=0)] == ["wp-1"]
    assert [item.content_id for item in read_catalogue_file(path)] == ["wp-1"]
    json_path = tmp_path / "c.json"
    json_path.write_bytes(b'\xef\xbb\xbf[{"id": "wp-1"}]')
    assert read_file(json_path) == [{"id": "wp-1"}]


def test_a_catalogue_that_cannot_be_read_is_a_catalogue_error(tmp_path: Path) -> None:
    folder = tmp_path / "c.csv"
    folder.mkdir()
    with pytest.raises(CatalogueError, match=r"c\.csv: 1 invalid entry: <file>: cannot read it: Is a direct"):
        read_file(folder)


# --- one check of the columns ---------------------------------------------------------------------

FULL = {
    "id": "wp-1",
    "title": "Item 1",
    "type": "whitepaper",
    "funnel_stage": "lead",
    "url": "https://x.example/1",
    "published": "2024-01-01",
}


@pytest.mark.parametrize(
    ("change", "problem"),
    [  # generate took each of these (any stage; the first ten characters of a date; no order; no title)
        ({"funnel_stage": "hot"}, "entry 1 funnel_stage: 'hot' is not one of awareness, lead, nurturing"),
        ({"funnel_stage": "disqualified"}, "entry 1 funnel_stage: 'disqualified' is not one of awareness"),
        ({"published": "2024-01-01junk"}, "entry 1 published: '2024-01-01junk' is not a YYYY-MM-DD date"),
        ({"updated": "2024-01-01T09:30junk"}, "entry 1 updated: '2024-01-01T09:30junk' is not a YYYY-MM-DD"),
        ({"updated": "2023-12-31"}, "entry 1 updated: 2023-12-31 is before published 2024-01-01"),
        ({"title": ""}, "entry 1 title: missing"),
        ({"funnel_stage": " lead"}, "entry 1 funnel_stage: ' lead' is not one of"),
    ],
)
def test_generate_refuses_what_content_load_refuses_with_the_same_message(
    tmp_path: Path, change: dict[str, str], problem: str
) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([FULL | change]), encoding="utf-8")
    with pytest.raises(CatalogueError) as loaded:
        parse_entries(read_file(path), str(path))
    with pytest.raises(CatalogueError) as generated:
        read_catalogue_file(path)
    assert str(generated.value) == str(loaded.value)
    assert str(loaded.value).startswith(f"{path}: 1 invalid entry: {problem}"), str(loaded.value)
    code, output = generate("--catalogue", str(path), "--out", str(tmp_path / "t.jsonl"))
    assert code == 2, output
    assert f"error: --catalogue {loaded.value}" in " ".join(output.split()), output


def test_generate_takes_the_column_spellings_content_load_takes(tmp_path: Path) -> None:
    """``funnel stage``, ``published_at`` and ``updated_at`` were 'missing' to the generator."""
    path = tmp_path / "mine.csv"
    path.write_text(
        "id,title,type,funnel stage,url,published_at,updated_at\n"
        "wp-1,Item 1,whitepaper,lead,https://x.example/1,2024-01-01T09:30:00Z,2024-02-01\n",
        encoding="utf-8",
    )
    [row] = parse_entries(read_file(path), loaded_at_ms=0)
    [item] = read_catalogue_file(path)
    assert (item.funnel_stage, item.published, item.updated) == ("lead", row[5], row[6])
    assert row[5:7] == (dt.date(2024, 1, 1), dt.date(2024, 2, 1))


def test_a_json_catalogue_may_give_roles_as_a_list(tmp_path: Path) -> None:
    """``"roles": ["read", "gated"]`` was read as the text "['read', 'gated']": unknown role "['read'"."""
    path = tmp_path / "mine.json"
    entries = [
        FULL | {"roles": ["read", " gated "]},
        FULL | {"id": "wp-2", "roles": []},  # nobody touches it, as "none"
        FULL | {"id": "wp-3", "roles": ["none"]},
        FULL | {"id": "wp-4", "roles": "read;gated"},
    ]
    path.write_text(json.dumps(entries), encoding="utf-8")
    items = read_catalogue_file(path)
    assert [item.roles for item in items] == [("read", "gated"), (), (), ("read", "gated")]
    code, output = generate("--catalogue", str(path), "--out", str(tmp_path / "t.jsonl"))
    assert code == 0, output


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"roles": 5}, "entry 1 roles: expected ;-separated text or a list of role names, got a number (5)"),
        (
            {"roles": {"read": True}},
            "entry 1 roles: expected ;-separated text or a list of role names, got an",
        ),
        ({"roles": ["read", 7]}, "entry 1 roles[1]: expected a role name (text), got a number (7)"),
        ({"roles": ["read", ["gated"]]}, "entry 1 roles[1]: expected a role name (text), got a list"),
        ({"roles": ["read", "shouting"]}, "entry 1 roles[1]: unknown role 'shouting' (known: read, gated"),
        ({"roles": ["read;gated"]}, "entry 1 roles[0]: unknown role 'read;gated'"),
        ({"page_category": ["blog"]}, "entry 1 page_category: expected text, got a list"),
        ({"asset_type": True}, "entry 1 asset_type: expected text, got true"),
    ],
)
def test_a_generator_column_of_the_wrong_json_type_is_named_with_its_entry_and_item(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([FULL, FULL | {"id": "wp-2"} | change]), encoding="utf-8")
    code, output = generate("--catalogue", str(path), "--out", str(tmp_path / "t.jsonl"))
    assert code == 2, output
    expected = f"error: --catalogue {path}: 1 invalid entry: {problem.replace('entry 1', 'entry 2')}"
    assert expected in " ".join(output.split()), output
    assert parse_entries(read_file(path), loaded_at_ms=0)  # content load ignores the generator's columns
