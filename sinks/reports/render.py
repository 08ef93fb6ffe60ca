"""Render report sections as an aligned text table, CSV or JSON (``--format table|csv|json``)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

FORMATS = ("table", "csv", "json")


def _cell(value: Any, plain_numbers: bool = False) -> str:
    if value is None:
        return "-"
    if plain_numbers and isinstance(value, (int, float)):
        return str(value)  # as stored: no thousands separators, no rounding
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = list(getattr(rows, "columns", ()))  # sinks.reports.Rows: known even when empty
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    return columns


def render_table(sections: Mapping[str, Sequence[Mapping[str, Any]]], plain_numbers: bool = False) -> str:
    """Reports are read by people: numbers get thousands separators and 4 significant digits. ``leadpulse
    sql`` passes ``plain_numbers``: its tables are copied into other tools, where ``12,345`` is text."""
    out = []
    for name, rows in sections.items():
        out.append(f"== {name} ({len(rows)} row{'s' if len(rows) != 1 else ''})")
        if not rows:  # the columns still say what would be there (they are known for an empty result)
            columns = _columns(rows)
            out += (["  ".join(columns)] if columns else []) + ["(none)", ""]
            continue
        columns = _columns(rows)
        cells = [[_cell(row.get(c), plain_numbers) for c in columns] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        out.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row_cells in cells:
            out.append("  ".join(v.ljust(w) for v, w in zip(row_cells, widths, strict=True)).rstrip())
        out.append("")
    return "\n".join(out)


def render_csv(sections: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """One CSV block per section; with several sections each starts with a ``# name`` line."""
    buffer = io.StringIO()
    for name, rows in sections.items():
        if len(sections) > 1:
            buffer.write(f"# {name}\n")
        columns = _columns(rows)
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _finite(value: Any) -> Any:
    """JSON has no Infinity or NaN (``1/0`` and ``0/0`` in ClickHouse): they become null, so that jq,
    JSON.parse and other strict readers accept the output."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        return [_finite(v) for v in value]
    return value


def render(
    sections: Mapping[str, Sequence[Mapping[str, Any]]], fmt: str, *, plain_numbers: bool = False
) -> str:
    if fmt == "table":
        return render_table(sections, plain_numbers)
    if fmt == "csv":
        return render_csv(sections)
    if fmt == "json":
        return json.dumps(_finite(sections), indent=2, default=str, allow_nan=False)
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
