"""Bounded state (issue #8): the soak workload through the pure core, state measured as event time passes.

A fixed population of leads and visitors over 90 days of event time: once the 30-day windows are full, the
serialized lead and anonymous states must stop growing (docs/scoring.md, "Bounded state"). Account entries are
covered in test_scoring.py: in this small population most of the workload's 3,600 domains are touched once,
so an account's entries are pruned too rarely for a whole-population figure to show the window.
"""

from __future__ import annotations

from typing import Any

import pytest

from agents.core import step
from agents.rules import load_rules
from agents.state import LeadState
from bench.workload import Workload
from streams.producer import lead_key
from tests.unit.builders import DAY, T0, visit

pytestmark = pytest.mark.unit


def test_serialized_state_stops_growing_after_the_window_fills() -> None:
    rules = load_rules(None)
    events = 24_000
    workload = Workload(seed=7, expected_events=events, span_days=90, population=300)
    states: dict[str, LeadState] = {}
    forwards: list[tuple[str, str, dict[str, Any]]] = []
    samples: list[int] = []
    for chunk in range(6):  # 15 days of event time each
        for schema, record in workload.take(events // 6):
            forwards.append((lead_key(record) or "", schema, record))
            while forwards:
                key, schema, record = forwards.pop()
                result = step(states.get(key), key, schema, record, rules, workload.now_ms)
                states[key] = result.state
                forwards.extend((f.key, f.schema, f.event) for f in result.forwards)
        if chunk >= 2:  # after 45 days: the 30-day windows are full
            samples.append(sum(len(s.to_bytes()) for s in states.values()))
    assert samples[-1] < samples[0] * 1.15, samples


def test_a_lead_active_for_a_year_keeps_a_state_of_the_same_size() -> None:
    rules = load_rules(None)
    state: LeadState | None = None
    sizes = []
    for day in range(365):
        for i in range(20):
            schema, event = visit("L1", T0 + day * DAY + i * 60_000, "product", event_id=f"v{day}-{i}")
            state = step(state, "L1", schema, event, rules, T0).state
        if day in (60, 364):
            assert state is not None
            sizes.append(len(state.to_bytes()))
    assert sizes[1] <= sizes[0] * 1.05, sizes
