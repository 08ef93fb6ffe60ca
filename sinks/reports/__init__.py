"""Analytics reports (DESIGN §7): SQL over the raw tables plus small Python post-processing.

Each report takes a ``Runner`` (see ``sinks.query_service``) and a ``Period`` and returns ``Sections``:
named lists of row dicts, rendered by ``sinks.reports.render``. Reports read the ReplacingMergeTree tables
with FINAL, so they count each event/transition once whatever merges have or have not happened.
"""

from __future__ import annotations

from typing import Any

Sections = dict[str, list[dict[str, Any]]]
