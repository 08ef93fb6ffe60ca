"""``rescore`` holds its history as Avro bytes (``agents.rescore_history``) and decodes it as it replays:
the same report as the straightforward replay (a list of decoded events, sorted, replayed twice), a fraction
of the memory."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents.rescore import (
    Change,
    LeadOutcome,
    RescoreReport,
    outcomes,
    read_history,
    replay,
    rescore,
    unmatched_rules,
)
from agents.rescore_history import CompactHistory
from agents.rules import Rules
from bench.workload import Workload
from tests.unit.builders import DAY, MIN, T0, rules, view, visit

pytestmark = pytest.mark.unit

Event = tuple[str, dict[str, Any]]


def straightforward(events: list[Event], old: Rules, new: Rules, now_ms: int) -> RescoreReport:
    """``rescore`` as it was: every event decoded in a list, a sorted copy, one replay per rule set."""
    history = sorted(
        (e for e in events if int(e[1].get("event_time") or 0) <= now_ms),
        key=lambda e: int(e[1].get("event_time") or 0),
    )
    before = outcomes(replay(history, old, now_ms), old)
    after = outcomes(replay(history, new, now_ms), new)
    changes = []
    for lead_id in sorted(before.keys() | after.keys()):
        a = before.get(lead_id, LeadOutcome("awareness", 0.0, "cold"))
        b = after.get(lead_id, LeadOutcome("awareness", 0.0, "cold"))
        if a.stage != b.stage or a.band != b.band:
            changes.append(Change(lead_id, a.stage, b.stage, a.score, b.score, a.band, b.band))
    changes.sort(key=lambda c: (-abs(c.delta), c.lead_id))
    unmatched, typos = unmatched_rules(history, new)
    return RescoreReport(len(history), len(after), changes, unmatched, typos, len(events) - len(history))


def messy_history(count: int, seed: int = 7) -> tuple[list[Event], int]:
    """Generated traffic (anonymous visitors stitched later, re-sent duplicates, late events) made harder:
    times cut to the half hour (many equal times), a tenth of the events moved elsewhere in the file, more
    exact duplicates, and a few events after ``now``. Returns the events and ``now``."""
    now = T0 + 10 * DAY
    events = Workload(seed=seed, expected_events=count, now_ms=now, population=max(20, count // 20)).take(
        count
    )
    rng = random.Random(seed)
    for _schema, record in events:
        record["event_time"] -= record["event_time"] % (30 * MIN)
    for _ in range(count // 10):
        events.insert(rng.randrange(len(events)), events.pop(rng.randrange(len(events))))
    events += [events[rng.randrange(len(events))] for _ in range(count // 50)]
    events += [(s, {**r, "event_time": now + MIN * (i + 1)}) for i, (s, r) in enumerate(events[:25])]
    return events, now


NEW = {
    "stages": {"mql_threshold": 60, "warm_from": 30},
    "scoring": {**rules().scoring.model_dump(), "page_category": {"pricng": 10, "blog": 3}},
}


def test_the_report_is_the_straightforward_replays_on_a_messy_generated_history(tmp_path: Path) -> None:
    events, now = messy_history(6000)
    old, new = rules(), rules(**NEW)
    expected = straightforward(events, old, new, now)
    assert expected.changes and expected.after_now == 25 and "page_category.pricng" in expected.likely_typos
    assert expected.stage_changes and len({e[1]["event_time"] for e in events}) < len(events) // 2
    assert rescore(events, old, new, now) == expected
    assert rescore(CompactHistory(events), old, new, now) == expected
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps({"type": s, **r}) + "\n" for s, r in events))
    from_file = rescore(read_history(path), old, new, now)
    assert json.dumps(from_file.to_dict()) == json.dumps(expected.to_dict())


def traced_peak(run: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_history_file_is_held_compactly_and_rescored_in_a_fraction_of_the_memory(tmp_path: Path) -> None:
    """A list of decoded events is ~900 bytes each for generated traffic, and both replays were run on it:
    months of topics did not fit in memory. Held as Avro bytes (~140 bytes each) and decoded as replayed,
    the whole run peaks well under the straightforward one (whose replay states are the same)."""
    count = 8000
    events = Workload(seed=3, expected_events=count, now_ms=T0, span_days=90).take(count)
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps({"type": s, **r}) + "\n" for s, r in events))
    del events
    next(iter(read_history(path)))  # schemas and codecs compiled once, not counted below
    assert traced_peak(lambda: next(iter(read_history(path)))) / count < 250
    old, new = rules(), rules(**NEW)
    compact = traced_peak(lambda: rescore(read_history(path), old, new, T0))
    straight = traced_peak(lambda: straightforward(list(read_history(path)), old, new, T0))
    assert compact < 0.7 * straight, f"{compact / count:.0f} vs {straight / count:.0f} bytes per event"


def test_a_compact_history_gives_back_each_record_as_it_was_given() -> None:
    events = Workload(seed=5, expected_events=2000, now_ms=T0).take(2000)
    history = CompactHistory(events)
    assert len(history) == len(events)
    again = list(history)
    assert again == events
    for (_, given), (_, back) in zip(events, again, strict=True):
        assert [type(v) for v in back.values()] == [type(given[k]) for k in back]


def test_records_that_would_not_come_back_exactly_are_kept_as_given() -> None:
    """The Python API takes any record: an int where the schema has a double comes back a float from Avro,
    a field outside the schema would vanish, a tuple would come back a list; those are held as they are."""
    _, base = visit(lead="L1", t=T0, event_id="w")
    odd = [
        ("web_visit", {**base, "extra": 1}),
        ("lead_identified", {"event_id": "p", "event_time": T0, "lead_id": "L1"}),  # fields missing
        ("web_visit", {**base, "url": "https://x.example/\ud800"}),  # not UTF-8
        ("content_view", {**view(lead="L1", t=T0, event_id="v")[1], "percent_viewed": 80}),
    ]
    assert list(CompactHistory(odd)) == odd
    assert [type(r.get("percent_viewed")) for _, r in CompactHistory(odd)][-1] is int


def test_time_order_is_stable_and_cut_at_up_to() -> None:
    times = [5, -3, 5, 0, 2**70, -3, 5, 1, -(2**70)]  # beyond 64 bits: the Python API takes any int
    events = [visit(lead=f"L{i}", t=t, event_id=f"w{i}") for i, t in enumerate(times)]
    history = CompactHistory(events)
    ordered = [r["event_id"] for _, r in history.in_time_order(2**70)]
    assert ordered == [r["event_id"] for _, r in sorted(events, key=lambda e: e[1]["event_time"])]
    assert ordered == ["w8", "w1", "w5", "w3", "w7", "w0", "w2", "w6", "w4"]
    assert [r["event_id"] for _, r in history.in_time_order(4)] == ["w8", "w1", "w5", "w3", "w7"]
    assert list(history.time_order(4)) == [8, 1, 5, 3, 7] and list(history) == events
    # a record without a time replays at 0, as rescore has always read it
    no_time = CompactHistory([("web_visit", {"event_id": "x"}), *events[:2]])
    assert [r["event_id"] for _, r in no_time.in_time_order(10)] == ["w1", "x", "w0"]


def test_drop_leaves_out_events_and_keeps_the_order() -> None:
    events = [visit(lead=f"L{i % 3}", t=T0 - i, event_id=f"w{i}") for i in range(9)]
    history = CompactHistory(events)
    assert history.drop(lambda _schema, record: record["lead_id"] == "L1") == 3
    assert list(history) == [e for e in events if e[1]["lead_id"] != "L1"]
    assert [r["event_id"] for _, r in history.in_time_order(T0)] == ["w8", "w6", "w5", "w3", "w2", "w0"]
