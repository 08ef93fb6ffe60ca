"""Analytics reports (DESIGN §7): SQL over the raw tables plus small Python post-processing.

Each report takes a ``Runner`` (see ``sinks.query_service``) and a ``Period`` and returns ``Sections``:
named lists of row dicts, rendered by ``sinks.reports.render``. Reports read the ReplacingMergeTree tables
with FINAL, so they count each event/transition once whatever merges have or have not happened.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Sections = dict[str, list[dict[str, Any]]]


class Rows(list[dict[str, Any]]):
    """A section's rows that also know their columns, so an empty section still renders its CSV header (a
    CSV reader given no header has no columns at all). JSON sees a plain list."""

    def __init__(self, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
        super().__init__(rows)
        self.columns = tuple(columns)
