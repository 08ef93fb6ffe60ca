"""Small fixes from the stop-26 ingestion review: CLI times keep their milliseconds exactly, and the demo's
live view shows ids and company names as written.
"""

from __future__ import annotations

import io
from datetime import datetime

import pytest
from rich.console import Console

from leadpulse.live_view import HotLeadFeed, LiveState, render
from sinks.reports.period import parse_instant
from streams.dlq import parse_since
from streams.settings import Settings

pytestmark = pytest.mark.unit

# float seconds * 1000 fall just below the integer here (from a sweep of 200,000 times), and 1 ms in 2026
EXACT = [
    ("2004-10-17T14:33:43.383+00:00", 1_098_023_623_383),
    ("2004-10-17T14:33:43.383", 1_098_023_623_383),  # naive = UTC
    ("2026-01-01T00:00:00.001+00:00", 1_767_225_600_001),
]


@pytest.mark.parametrize(("text", "millis"), EXACT)
def test_dlq_since_and_report_times_keep_their_milliseconds(text: str, millis: int) -> None:
    """``dlq list --since`` and ``report --since/--until`` took ``int(timestamp() * 1000)``: about 1.5% of
    millisecond times came out 1 ms early, so a bound meant to include a record at that millisecond
    excluded it."""
    assert parse_since(text) == millis
    assert parse_instant(text, now_ms=0) == millis


def test_a_time_that_float_arithmetic_rounds_down_is_among_the_cases() -> None:
    """The premise of the test above: the old arithmetic gets its first time wrong."""
    text, millis = EXACT[0]
    assert int(datetime.fromisoformat(text).timestamp() * 1000) == millis - 1


def test_the_live_view_shows_a_lead_id_and_company_as_written_not_as_markup() -> None:
    """A lead id "[/x]" (any producer can send one) made rich raise a MarkupError while drawing the demo's
    live view; "[b]" vanished from the company name."""
    feed = HotLeadFeed(Settings())
    feed.recent.append(
        {
            "lead_id": "[/x]",
            "score": 130.0,
            "company_name": "[b]Acme[/b]",
            "signals": [{"rule": "demo_request", "points": 40.0}],
        }
    )
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(render(LiveState(), feed))
    assert "[/x]" in out.getvalue()
    assert "[b]Acme[/b]" in out.getvalue()
