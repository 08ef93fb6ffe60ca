"""The demo's "scored" count is of input events, comparable with "published".

The live view and the --no-live status line summed ``leadpulse_events_consumed_total`` over every topic the
worker reads, its internal hops too (leadpulse.internal.*: events forwarded to their lead, lead scores
re-keyed by account). A default demo ended with "published 10,579 · scored 23,380": more scored than sent.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from leadpulse.live_view import HotLeadFeed, LiveState, render, scored
from streams.settings import Settings

pytestmark = pytest.mark.unit

NAME = "leadpulse_events_consumed_total"


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    counts = {
        "events.web_visits": 6_000.0,
        "events.downloads": 1_579.0,
        "leads.profiles": 1_500.0,
        "sales.activities": 1_500.0,
        "leadpulse.internal.identity": 2_801.0,
        "leadpulse.internal.accounts": 10_000.0,
    }
    return {(NAME, (("topic", topic),)): n for topic, n in counts.items()}


def test_scored_counts_the_input_topics_only() -> None:
    assert scored(_samples()) == 10_579


def test_the_live_view_shows_input_events_scored() -> None:
    out = io.StringIO()
    state = LiveState(worker=_samples(), published=10_579)
    Console(file=out, width=200, color_system=None).print(render(state, HotLeadFeed(Settings())))
    assert "scored 10,579" in out.getvalue()
