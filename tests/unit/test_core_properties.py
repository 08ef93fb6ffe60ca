"""Properties of the core under at-least-once, partition-ordered delivery.

The delivery model: each input topic keeps its own order (Kafka partitions), topics interleave arbitrarily,
and any event may be delivered again later (redelivery after a crash). The properties:

1. **Score**: any interleaving with duplicates gives the same final score (within 1e-9) as event-time order,
   for events within the dedup window (30 days) of each other — decay is exact per rule and caps keep the
   earliest events of a day, so neither depends on arrival order. Negative points included.
2. **Stage**: for profile + behavioural events with non-negative points, the final stage is the same in any
   interleaving. Why only these: with negative points, or sales activities (a rejection before vs after the
   MQL), or decay across the threshold, *when* the threshold was crossed depends on arrival order by nature.
   Decay is made negligible (half-life 10^6 days) so the crossing depends only on which events arrived.
3. Every stage move, for any events and timer scans, is an edge of ``ALLOWED_EDGES`` and continues the chain.
4. State round-trips through ``to_dict``/``from_dict`` (and JSON bytes) without change, and a restored state
   behaves exactly like the original.
5. **SLA**: a lead's sales follow-ups and the behaviour that makes it hot come on different topics, each in
   event-time order (a CRM writes a lead's activities as they happen), read in any interleaving with
   duplicates: the same ``sla_timeout`` records (levels, ids, times) and the same clock left running as in
   event-time order, 1 h, 24 h and segment clocks, follow-ups before, in and after each level's time. Why one
   behavioural topic and a lead known before: the MQL's time itself depends on the read order across
   behavioural topics (property 2) and is clamped to the lead's previous move; this property is about who
   answered the MQL, not when it became one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.core import check_timers, step
from agents.identity import buffer_event
from agents.rules import Rules, load_rules, rules_from_mapping
from agents.scoring import behaviour_at
from agents.stages import ALLOWED_EDGES
from agents.state import LeadState
from tests.unit.builders import DAY, HOUR, T0, activity, click, download, identified, view, visit

pytestmark = pytest.mark.unit
Event = tuple[str, dict[str, Any]]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CATEGORIES = ["pricing", "product", "blog", "careers", "case_study", None]
ASSETS = ["whitepaper", "ebook", "catalog", "demo_request", "case_study", "other"]
CONTENT = ["webinar", "blog", "whitepaper", "video"]
LINKS = ["https://x.example/product", "https://x.example/unsubscribe", "bounce://550"]


def flat_rules(**sections: Any) -> Rules:
    """Integer points, caps, immediate rules, no negatives, negligible decay: for the stage property."""
    return rules_from_mapping(
        {
            **sections,
            "scoring": {
                "default_half_life_days": 1e6,
                "event_type": {
                    "web_visit": {"points": 1, "daily_cap": 3},
                    "email_click": 5,
                    "content_view": 4,
                    "download": 10,
                },
                "page_category": {"pricing": {"points": 12, "daily_cap": 2}, "product": 5, "careers": 0},
                "asset_type": {
                    "demo_request": {"points": 30, "immediate_mql": True, "daily_cap": 1},
                    "whitepaper": {"points": 15, "daily_cap": 2},
                },
                "content_type": {"webinar": {"points": 20, "daily_cap": 2}},
            },
            "fit": {"seniority": {"c_level": 20, "staff": 2}},
        }
    )


DEFAULT = load_rules()


@st.composite
def behavioural(draw: st.DrawFn, span_ms: int, negatives: bool) -> list[Event]:
    n = draw(st.integers(1, 25))
    events: list[Event] = []
    for i in range(n):
        t = T0 + draw(st.integers(0, span_ms))
        kind = draw(st.sampled_from(["visit", "click", "download", "view"]))
        eid = f"e{i}"
        if kind == "visit":
            cats = CATEGORIES if negatives else [c for c in CATEGORIES if c != "careers"]
            events.append(visit(t=t, category=draw(st.sampled_from(cats)), event_id=eid))
        elif kind == "click":
            links = LINKS if negatives else LINKS[:1]
            events.append(click(t=t, link=draw(st.sampled_from(links)), event_id=eid))
        elif kind == "download":
            events.append(download(t=t, asset=draw(st.sampled_from(ASSETS)), event_id=eid))
        else:
            events.append(view(t=t, content_type=draw(st.sampled_from(CONTENT)), event_id=eid))
    return events


@st.composite
def delivery(draw: st.DrawFn, events: list[Event]) -> list[Event]:
    """A partition-preserving interleaving (per-schema order kept) with redelivered duplicates."""
    topics: dict[str, list[Event]] = {}
    for event in events:
        topics.setdefault(event[0], []).append(event)
    order: list[Event] = []
    cursors = {name: 0 for name in topics}
    while any(cursors[n] < len(topics[n]) for n in topics):
        name = draw(st.sampled_from(sorted(n for n in topics if cursors[n] < len(topics[n]))))
        order.append(topics[name][cursors[name]])
        cursors[name] += 1
    for _ in range(draw(st.integers(0, 5))):
        original = draw(st.integers(0, len(order) - 1))
        position = draw(st.integers(original + 1, len(order)))
        order.insert(position, order[original])
    return order


def run(events: list[Event], rules: Rules, state: LeadState | None = None) -> tuple[LeadState, list[Any]]:
    outputs: list[Any] = []
    for schema, event in events:
        result = step(state, "L1", schema, event, rules, T0)
        state = result.state
        outputs.extend(result.outputs)
    assert state is not None
    return state, outputs


def final_score(state: LeadState, rules: Rules) -> float:
    return state.fit + behaviour_at(state, rules, state.max_time)


@SETTINGS
@given(st.data())
def test_score_is_the_same_for_any_partition_preserving_order_with_duplicates(data: st.DataObject) -> None:
    events = data.draw(behavioural(span_ms=20 * DAY, negatives=True))
    profile = identified(t=T0 + data.draw(st.integers(0, 20 * DAY)), seniority="director", event_id="p")
    canonical = sorted([profile, *events], key=lambda e: (e[1]["event_time"], e[1]["event_id"]))
    delivered = data.draw(delivery([profile, *events]))
    expected, _ = run(canonical, DEFAULT)
    actual, _ = run(delivered, DEFAULT)
    assert final_score(actual, DEFAULT) == pytest.approx(final_score(expected, DEFAULT), abs=1e-9)
    assert actual.max_time == expected.max_time
    assert set(actual.seen) == set(expected.seen)


@SETTINGS
@given(st.data())
def test_stage_is_the_same_for_any_order_of_non_negative_behaviour(data: st.DataObject) -> None:
    rules = flat_rules()
    events = data.draw(behavioural(span_ms=HOUR, negatives=False))
    flags = data.draw(st.sampled_from([[], ["student"]]))
    profile = identified(
        t=T0 + data.draw(st.integers(0, HOUR)), seniority="c_level", flags=flags, event_id="p"
    )
    canonical = sorted([profile, *events], key=lambda e: (e[1]["event_time"], e[1]["event_id"]))
    expected, _ = run(canonical, rules)
    actual, outputs = run(data.draw(delivery([profile, *events])), rules)
    assert actual.stage == expected.stage
    assert final_score(actual, rules) == pytest.approx(final_score(expected, rules), abs=1e-9)
    hot = [o for o in outputs if o.schema == "hot_lead"]
    assert len(hot) == (1 if actual.stage == "mql" else 0)


@SETTINGS
@given(st.data())
def test_sla_events_are_the_same_whichever_topic_is_read_first(data: st.DataObject) -> None:
    rules = flat_rules(sla={"segments": {"enterprise": {"hours": 4}}})
    segment = data.draw(st.sampled_from([None, "enterprise"]))
    known = [  # nurturing a day before: 20 fit + 5, so 7+ downloads or a demo request make it hot
        identified(t=T0 - DAY, seniority="c_level", segment=segment, event_id="p"),
        click(t=T0 - DAY, event_id="c"),
    ]
    downloads = [
        download(
            t=T0 + data.draw(st.integers(0, DAY)),
            asset=data.draw(st.sampled_from(ASSETS)),
            event_id=f"d{i}",
        )
        for i in range(data.draw(st.integers(1, 12)))
    ]
    # follow-ups from just before the first possible MQL to 26 h after the last, all within the late window (3
    # days) of each other: each level's edge is in range, and no event is late
    touches = [
        activity("first_touch", t=T0 + data.draw(st.integers(-HOUR, DAY + 26 * HOUR)), event_id=f"s{i}")
        for i in range(data.draw(st.integers(0, 3)))
    ]
    by_time = sorted([*downloads, *touches], key=lambda e: (e[1]["event_time"], e[1]["event_id"]))
    in_order = sorted(touches, key=lambda e: e[1]["event_time"])  # each topic in event-time order
    delivered = data.draw(delivery([*sorted(downloads, key=lambda e: e[1]["event_time"]), *in_order]))
    expected, expected_out = run(known + by_time, rules)
    actual, actual_out = run(known + delivered, rules)

    def sla_of(outputs: list[Any]) -> list[dict[str, Any]]:
        return [o.record for o in outputs if o.schema == "sla_timeout"]

    def clocks(outputs: list[Any]) -> list[tuple[int, int | None]]:
        return [
            (o.record["became_hot_at"], o.record["sla_due_at"]) for o in outputs if o.schema == "hot_lead"
        ]

    assert actual.stage == expected.stage
    assert sla_of(actual_out) == sla_of(expected_out)
    assert clocks(actual_out) == clocks(expected_out)
    # a clock left running is the same clock; whom it names may differ (a follow-up before the MQL read after
    # it brought the owner later), and the scan below puts the lead's owner on its levels then
    assert [(t.sla, t.started_at, t.due_at, t.fired) for t in actual.timers.values()] == [
        (t.sla, t.started_at, t.due_at, t.fired) for t in expected.timers.values()
    ]
    later = [check_timers(s, rules, T0 + 10 * DAY).outputs for s in (actual, expected)]
    assert sla_of(later[0]) == sla_of(later[1])
    ids = [r["timeout_id"] for r in sla_of(actual_out) + sla_of(later[0])]
    assert len(ids) == len(set(ids))


ACTIVITIES = [
    "first_touch",
    "accepted",
    "rejected",
    "meeting_booked",
    "opportunity_created",
    "closed_won",
    "closed_lost",
    "onboarded",
    "upsell_opened",
]


@st.composite
def anything(draw: st.DrawFn) -> list[Event | int]:
    """Any mix of behaviour, profiles, sales activities and timer scans (ints = scan at that wall time)."""
    items: list[Event | int] = []
    for i in range(draw(st.integers(1, 30))):
        t = T0 + draw(st.integers(0, 400 * DAY))
        kind = draw(st.sampled_from(["behaviour", "behaviour", "profile", "sales", "sales", "scan"]))
        if kind == "behaviour":
            items.append(draw(behavioural(span_ms=0, negatives=True))[0])
            items[-1][1].update(event_time=t, event_id=f"b{i}")
        elif kind == "profile":
            flags = draw(st.sampled_from([[], [], ["student"], ["competitor"]]))
            items.append(identified(t=t, flags=flags, seniority="vp", event_id=f"p{i}"))
        elif kind == "sales":
            reason = draw(st.sampled_from([None, "no budget"]))
            items.append(activity(draw(st.sampled_from(ACTIVITIES)), t=t, reason=reason, event_id=f"s{i}"))
        else:
            items.append(t + draw(st.integers(0, 200 * DAY)))
    return items


def drive(items: list[Event | int], rules: Rules) -> tuple[LeadState | None, list[Any]]:
    state: LeadState | None = None
    outputs: list[Any] = []
    for item in items:
        if isinstance(item, int):
            if state is not None:
                result = check_timers(state, rules, item)
                state = result.state
                outputs.extend(result.outputs)
        else:
            result = step(state, "L1", item[0], item[1], rules, T0)
            state = result.state
            outputs.extend(result.outputs)
    return state, outputs


@SETTINGS
@given(anything())
def test_stage_moves_only_along_allowed_edges(items: list[Event | int]) -> None:
    state, outputs = drive(items, DEFAULT)
    current = "awareness"
    transitions = [o.record for o in outputs if o.schema == "stage_transition"]
    for seq, record in enumerate(transitions, start=1):
        assert record["from_stage"] == current
        assert record["to_stage"] in ALLOWED_EDGES[current]
        assert record["transition_id"] == f"L1:{seq}"
        current = record["to_stage"]
    if state is not None:
        assert state.stage == current
    times = [r["occurred_at"] for r in transitions]
    assert times == sorted(times)
    for record in (o.record for o in outputs if o.schema == "hot_lead"):
        assert record["notification_id"].startswith("L1:hot:")


@SETTINGS
@given(anything(), anything())
def test_state_round_trips_and_a_restored_state_behaves_the_same(
    first: list[Event | int], then: list[Event | int]
) -> None:
    state, _ = drive(first, DEFAULT)
    if state is None:
        return
    restored = LeadState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    assert LeadState.from_bytes(state.to_bytes()) == state
    # the changelog format did not change with orjson: states written before it are read the same
    assert json.loads(state.to_bytes()) == json.loads(json.dumps(state.to_dict(), separators=(",", ":")))
    a_state, a_out = drive_from(state, then)
    b_state, b_out = drive_from(restored, then)
    assert a_out == b_out
    assert a_state == b_state


def drive_from(state: LeadState, items: list[Event | int]) -> tuple[LeadState, list[Any]]:
    outputs: list[Any] = []
    for item in items:
        if isinstance(item, int):
            result = check_timers(state, DEFAULT, item)
        else:
            result = step(
                state, "L1", item[0], {**item[1], "event_id": "n" + item[1]["event_id"]}, DEFAULT, T0
            )
        state = result.state
        outputs.extend(result.outputs)
    return state, outputs


def test_a_buffered_event_with_nan_or_infinity_survives_the_state_round_trip() -> None:
    """orjson writes NaN/inf as null; a raw event buffered for a later stitch must come back unchanged."""
    state = LeadState(key="anon-1")
    state.buffer = [["content_view", {"event_id": "e1", "percent_viewed": float("nan")}]]
    state.buffer.append(["content_view", {"event_id": "e2", "percent_viewed": float("inf")}])
    restored = LeadState.from_bytes(state.to_bytes()).buffer
    assert restored[0][1]["percent_viewed"] != restored[0][1]["percent_viewed"]  # NaN
    assert restored[1][1]["percent_viewed"] == float("inf")


def test_a_nan_buffered_after_a_restore_still_survives_the_next_write() -> None:
    """A state read back with finite buffers is not rescanned on every write (``non_finite``); the event
    that brings a NaN must still switch the write to the json path."""
    state = LeadState(key="anon-1")
    buffer_event(state, "content_view", {"event_id": "e1", "event_time": 1, "percent_viewed": 0.5}, 10)
    restored = LeadState.from_bytes(state.to_bytes())
    assert restored.non_finite is False
    buffer_event(
        restored, "content_view", {"event_id": "e2", "event_time": 2, "percent_viewed": float("nan")}, 10
    )
    again = LeadState.from_bytes(restored.to_bytes()).buffer
    assert [e["event_id"] for _, e in again] == ["e1", "e2"]
    assert again[1][1]["percent_viewed"] != again[1][1]["percent_viewed"]  # NaN, not null
