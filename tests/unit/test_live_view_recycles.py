"""The demo's live view counts recycles as the funnel report does: moves back to nurturing, not every entry.

Its hot-lead panel said "recycled: 564 entries" at the end of a default demo whose funnel report listed
102 recycles (61 rejected, 41 closed_lost): it counted every transition into nurturing, and most of those
are the first step of a lead that is being nurtured (lead -> nurturing), not a recycle.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from leadpulse.live_view import HotLeadFeed, LiveState, recycles, render
from streams.settings import Settings

pytestmark = pytest.mark.unit

NAME = "leadpulse_stage_transitions_total"


def _worker_samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    moves = {("lead", "nurturing"): 460.0, ("mql", "nurturing"): 61.0, ("opportunity", "nurturing"): 41.0}
    moves |= {("customer", "nurturing"): 2.0, ("lead", "mql"): 200.0, ("expansion", "customer"): 3.0}
    return {(NAME, (("from_stage", f), ("to_stage", t))): n for (f, t), n in moves.items()}


def test_recycles_are_backward_moves_to_nurturing_only() -> None:
    assert recycles(_worker_samples()) == 61 + 41 + 2


def test_the_hot_lead_panel_shows_the_recycle_count() -> None:
    state = LiveState(worker=_worker_samples())
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(render(state, HotLeadFeed(Settings())))
    text = out.getvalue()
    assert "recycled to nurturing: 104" in text  # the stage table beside it still shows 564 entries
