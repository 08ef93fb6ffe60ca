"""Report tables are for reading (``12,345``); ``leadpulse sql`` tables are for copying (``12345``)."""

from __future__ import annotations

import json

import pytest

from sinks.reports.render import render

pytestmark = pytest.mark.unit

ROWS = {"result": [{"n": 12345, "x": 1234567.25, "f": 0.123456789, "none": None}]}


def test_report_tables_keep_thousands_separators() -> None:
    assert render(ROWS, "table").splitlines()[2].split() == ["12,345", "1,234,567", "0.1235", "-"]


def test_plain_numbers_print_as_stored() -> None:
    line = render(ROWS, "table", plain_numbers=True).splitlines()[2]
    assert line.split() == ["12345", "1234567.25", "0.123456789", "-"]


def test_json_output_stays_valid_json_for_infinity_and_nan() -> None:
    out = render({"result": [{"inf": float("inf"), "nan": float("nan"), "n": 1.5}]}, "json")

    def strict(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    assert json.loads(out, parse_constant=strict) == {"result": [{"inf": None, "nan": None, "n": 1.5}]}


def test_json_output_keeps_bytes_and_nested_values_as_before() -> None:
    """The non-finite cleanup walks sequences; bytes are one, and must stay one value (``default=str``)."""
    out = render({"result": [{"raw": b"ab", "arr": [1.0, float("-inf")], "m": {"k": float("nan")}}]}, "json")
    assert json.loads(out) == {"result": [{"raw": "b'ab'", "arr": [1.0, None], "m": {"k": None}}]}


def test_an_empty_table_section_still_shows_its_columns() -> None:
    """An empty result printed only "(none)": CSV and JSON kept the columns, the table did not (CLI audit)."""
    from sinks.reports import Rows

    lines = render({"result": Rows([], ("lead_id", "score"))}, "table").splitlines()
    assert lines[:3] == ["== result (0 rows)", "lead_id  score", "(none)"]
    assert render({"result": []}, "table").splitlines()[:2] == ["== result (0 rows)", "(none)"]
