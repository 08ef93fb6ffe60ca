"""What ``leadpulse demo`` prints of its reports fits a terminal.

It printed every column: a content row is ~200 characters and an SLA row ~150, so an 80- or 100-column
terminal wrapped each content row over two or three lines (29 items, ~90 lines) right after the live view,
the first thing a new user reads. The demo now prints the columns that answer each report's question (and
the top 10 content items), says so, and leaves the rest to ``leadpulse report NAME`` and the HTML report.
"""

from __future__ import annotations

from typing import Any

import pytest

from leadpulse.live_view import terminal_report
from sinks.reports.render import render

pytestmark = pytest.mark.unit

CONTENT_ROW = {
    "content_id": "product-advanced-analytics",
    "title": "Live: tuning scoring rules with real data, a webinar for power users",
    "content_type": "product_page",
    "funnel_stage": "opportunity",
    "views": 1_676,
    "unique_leads": 1_438,
    "downloads": 150,
    "clicks": 135,
    "influenced_leads": 1_267,
    "mean_dwell_seconds": 2_293.4,
    "touched_conversion": 0.6096,
    "all_leads_conversion": 0.295,
    "lift": 2.07,
    "median_days_to_next_stage": 0.64,
}
FOLLOW_UP = {
    "mqls": 1_289,
    "followed_up": 1_261,
    "within_sla": 1_261,
    "sla_hours": 24,
    "compliance": 0.9288,
    "not_judged": 8,
    "with_own_sla": 1_289,
    "within_own_sla": 1_261,
    "own_sla_compliance": 0.9031,
    "not_judged_own": 0,
    "p50_hours": 0.44,
    "p90_hours": 1.79,
    "p95_hours": 2.12,
}
OWNER = {
    "owner": "(unassigned)",
    "hot_leads": 121,
    "with_own_sla": 121,
    "within_own_sla": 103,
    "not_judged_own": 0,
    "own_sla_compliance": 0.8512,
    "warnings": 18,
    "breaches": 18,
}
BY_OWNER = {"sla": "hot_lead_follow_up", "owner": "rep-ben", "warnings": 11, "breaches": 4}


def _width(sections: dict[str, Any]) -> int:
    return max(len(line) for line in render(sections, "table").splitlines())


def test_the_content_report_fits_80_columns_with_its_top_ten_items() -> None:
    full = {"content": [dict(CONTENT_ROW) for _ in range(29)]}
    assert _width(full) > 150  # the premise: the whole report does not fit
    shown, note = terminal_report("content", full)
    assert _width(shown) <= 80
    assert len(shown["content"]) == 10
    assert {"content_id", "influenced_leads", "lift"} <= set(shown["content"][0])
    assert note is not None and "`leadpulse report content`" in note and "rows" in note


def test_the_sla_report_fits_80_columns_and_keeps_its_narrow_section_whole() -> None:
    full = {"follow_up": [FOLLOW_UP], "by_owner": [BY_OWNER] * 9, "owner_compliance": [OWNER] * 7}
    shown, note = terminal_report("sla", full)
    assert _width(shown) <= 80
    assert shown["by_owner"] == full["by_owner"]
    assert {"own_sla_compliance", "compliance", "p50_hours"} <= set(shown["follow_up"][0])
    assert note is not None and "`leadpulse report sla`" in note


def test_a_report_that_fits_is_printed_whole_without_a_note() -> None:
    funnel = {"stages": [{"stage": "lead", "entered": 1_000}], "recycles": []}
    assert terminal_report("funnel", funnel) == (funnel, None)
