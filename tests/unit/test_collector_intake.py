"""The compiled fast path (``schemas.fast_codec.EventCodec``) gives exactly the registry's answers.

The fast path only speeds up events it can vouch for and hands the rest to ``SchemaRegistry``; these tests
generate valid and broken events for every type the collector accepts and check that both paths accept the
same events, build equal records (same value types too) and encode byte-identical messages, and that every
rejection carries the registry's own field errors.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import SchemaError, SchemaValidationError
from schemas.fast_codec import EventCodec, codec_for
from schemas.registry import SchemaRegistry, default_registry
from streams.collector_publishers import partition_for
from streams.event_hygiene import MIN_EVENT_TIME_MS
from streams.intake import EVENT_TYPES, Accepted, Limits, Rejected, normalise_event

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REGISTRY = default_registry()
CODEC = codec_for(REGISTRY)
NOW = 1_780_000_000_000

BASE: dict[str, dict[str, Any]] = {
    "web_visit": {"url": "https://example.com/pricing", "page_category": "pricing", "utm_source": None},
    "email_click": {"campaign_id": "c-1", "email_id": "e-1", "link_url": "https://example.com/x"},
    "download": {"content_id": "wp-1", "asset_type": "whitepaper"},
    "content_view": {
        "content_id": "cs-9",
        "content_type": "case_study",
        "dwell_ms": 5000,
        "percent_viewed": 80,
    },
    "lead_identified": {"lead_id": "L-1", "email": "a@b.c", "company_size": 120, "flags": ["x", "y"]},
    "sales_activity": {"lead_id": "L-1", "activity": "meeting_booked", "amount": 1200},
}

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 50.5, 100.0, 100.5, -1.0, 1e300]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "2026-01-01T00:00:00Z", "meeting_booked", "x" * 5000, "\ud800", "é€😀"]),
)
json_values = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), json_scalars, max_size=2),
)


def base_event(kind: str) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "e-1",
        "event_time": NOW,
        "anonymous_id": "a-1",
        "source": "web",
        "received_at": NOW,
    }
    event.update(BASE[kind])
    if kind == "sales_activity":
        event.pop("anonymous_id")
    return event


@st.composite
def events(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid event of some type, then a few random edits: fields dropped, set to any JSON value, added."""
    kind = draw(st.sampled_from(EVENT_TYPES))
    event = base_event(kind)
    names = [f["name"] for f in REGISTRY.schema(kind).raw["fields"]]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        action = draw(st.sampled_from(["set", "set", "drop", "add"]))
        if action == "drop" and event:
            event.pop(draw(st.sampled_from(sorted(event))))
        elif action == "add":
            event[draw(st.sampled_from(["extra", "type", "Event_id"]))] = draw(json_values)
        else:
            event[draw(st.sampled_from(names))] = draw(json_values)
    return kind, event


def outcome(call: Any) -> tuple[str, Any]:
    """("ok", value) or ("error", exception type and message) for comparing the two paths."""
    try:
        return "ok", call()
    except (SchemaError, ValueError, TypeError, OverflowError) as exc:
        errors = (
            [(e.field, e.problem) for e in exc.errors] if isinstance(exc, SchemaValidationError) else None
        )
        return "error", (type(exc).__name__, str(exc), errors)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types throughout (1 == 1.0 is not good enough for an Avro long vs double)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@SETTINGS
@given(events())
def test_fast_validation_accepts_rejects_and_builds_exactly_what_the_registry_does(
    case: tuple[str, dict[str, Any]],
) -> None:
    kind, event = case
    expected = outcome(lambda: REGISTRY.validate(kind, dict(event)))
    got = outcome(lambda: CODEC.validate(kind, dict(event)))
    assert got[0] == expected[0], (got, expected)
    if expected[0] == "error":
        assert got == expected
        return
    assert same(got[1], expected[1]), (got, expected)
    assert outcome(lambda: CODEC.encode(kind, got[1])) == outcome(lambda: REGISTRY.encode(kind, expected[1]))


@SETTINGS
@given(st.sampled_from(EVENT_TYPES), st.data())
def test_fast_encoding_is_byte_identical_even_for_values_validation_lets_through(
    kind: str, data: st.DataObject
) -> None:
    """Records the registry's validation accepts but fastavro refuses (a long beyond 64 bits, a string with
    a lone surrogate) must fail the same way, not be encoded differently."""
    record = REGISTRY.validate(kind, base_event(kind))
    name = data.draw(st.sampled_from(sorted(record)))
    record[name] = data.draw(
        st.one_of(
            st.sampled_from([2**63, -(2**63) - 1, 2**63 - 1, -(2**63), 0, 4095, 4096, "\ud800", "", None]),
            st.text(max_size=5000),
            st.integers(),
        )
    )
    assert outcome(lambda: CODEC.encode(kind, record)) == outcome(lambda: REGISTRY.encode(kind, record))


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_every_collector_type_has_a_fast_path_and_round_trips(kind: str) -> None:
    assert CODEC.compiled(kind)
    record = CODEC.validate(kind, base_event(kind))
    encoded = CODEC.encode(kind, record)
    assert encoded == REGISTRY.encode(kind, record)
    assert REGISTRY.decode(encoded) == (kind, record)


def test_long_strings_and_arrays_encode_like_fastavro() -> None:
    record = REGISTRY.validate(
        "lead_identified", {**base_event("lead_identified"), "email": "é" * 3000, "flags": ["a" * 70] * 40}
    )
    assert CODEC.encode("lead_identified", record) == REGISTRY.encode("lead_identified", record)


def test_normalise_event_gives_the_same_answers_with_and_without_the_fast_path() -> None:
    """Through ``normalise_event`` as the collector calls it: ISO timestamps, clock skew, the future limit."""
    fresh = EventCodec(SchemaRegistry())
    cases: list[dict[str, Any]] = [
        {"type": "web_visit", "event_id": "e1", "anonymous_id": "a", "url": "https://x", "event_time": NOW},
        {"type": "web_visit", "event_id": "e2", "anonymous_id": "a", "url": "https://x"},
        {
            "type": "web_visit",
            "event_id": "e3",
            "anonymous_id": "a",
            "url": "https://x",
            "event_time": "2026-05-01T10:00:00Z",
            "sent_at": "2026-05-01T10:00:05Z",
        },
        {"type": "web_visit", "event_id": "e4", "anonymous_id": "a", "url": 5, "utm_term": 3},
        {
            "type": "web_visit",
            "event_id": "e5",
            "anonymous_id": "a",
            "url": "https://x",
            "event_time": NOW + 30 * 3_600_000,
        },
        {"type": "content_view", **base_event("content_view"), "percent_viewed": 120},
        {"type": "content_view", **base_event("content_view"), "percent_viewed": 99},
        {"type": "web_visit", "event_id": " ", "url": "https://x"},
        {
            "type": "web_visit",
            "event_id": "e6",
            "anonymous_id": "a",
            "url": "https://x",
            "event_time": NOW // 1000,
        },
        {
            "type": "web_visit",
            "event_id": "e7",
            "anonymous_id": "a",
            "url": "https://x",
            "event_time": "1999-12-31",
        },
    ]

    class Reference(EventCodec):
        def validate(self, name: str, data: Any) -> dict[str, Any]:
            return self.registry.validate(name, data)

    reference = Reference(SchemaRegistry())
    for index, event in enumerate(cases):
        args: dict[str, Any] = {
            "source": "web",
            "received_at": NOW,
            "batch_sent_at": NOW - 7_200_000,
            "registry": REGISTRY,
            "limits": Limits(),
        }
        fast = normalise_event(dict(event), index, codec=fresh, **args)
        slow = normalise_event(dict(event), index, codec=reference, **args)
        assert fast == slow, event
        assert isinstance(fast, Accepted | Rejected)


VISIT: dict[str, Any] = {"type": "web_visit", "event_id": "e", "anonymous_id": "a", "url": "https://x"}


def intake(event: dict[str, Any], sent_at: Any = None) -> Accepted | Rejected:
    """``normalise_event`` as the collector calls it for one event received at NOW."""
    return normalise_event(
        dict(event),
        0,
        source="web",
        received_at=NOW,
        batch_sent_at=sent_at,
        registry=REGISTRY,
        limits=Limits(),
    )


def problems(result: Accepted | Rejected) -> list[tuple[str, str]]:
    assert isinstance(result, Rejected), result
    return [(e.field, e.problem) for e in result.errors]


@pytest.mark.parametrize("sent_at", [None, NOW - 2_000], ids=["no sent_at", "sent_at in milliseconds"])
def test_an_event_time_in_epoch_seconds_is_an_error_naming_the_field_and_the_milliseconds_meant(
    sent_at: int | None,
) -> None:
    """It was accepted as an event of January 1970 and scored as far too old to count, silently."""
    seconds = 1_764_403_200
    [(field, problem)] = problems(intake({**VISIT, "event_time": seconds}, sent_at))
    assert field == "event_time"
    assert problem == (
        "1764403200 looks like epoch seconds: as epoch milliseconds it is 1970-01-21T10:06:43.200Z, "
        "before 2000-01-01, the earliest time accepted; send 1764403200000 for 2025-11-29T08:00:00.000Z"
    )


def test_a_sent_at_in_epoch_seconds_is_named_and_not_used_to_correct() -> None:
    """Corrected by a sent_at in seconds, an event_time in seconds landed near the receipt time with its
    offsets shrunk a thousandfold; an event_time in milliseconds was moved decades ahead."""
    sent_at = NOW // 1000
    both = problems(intake({**VISIT, "event_time": sent_at - 60}, sent_at))
    assert [field for field, _ in both] == ["sent_at", "event_time"]
    assert all(" looks like epoch seconds: " in problem for _, problem in both)
    assert both[0][1].endswith(f"; send {sent_at * 1000} for 2026-05-28T20:26:40.000Z")
    assert [field for field, _ in problems(intake({**VISIT, "event_time": NOW - 60_000}, sent_at))] == [
        "sent_at"
    ]
    # with nothing to correct (no event_time: the receipt time), a sent_at in seconds does no harm
    untimed = intake(VISIT, sent_at)
    assert isinstance(untimed, Accepted) and untimed.record["event_time"] == NOW


def test_a_device_clock_reset_to_1970_is_still_corrected_by_sent_at() -> None:
    """Before 2000 is judged after the correction: a wrong client clock is what sent_at is for."""
    result = intake({**VISIT, "event_time": 3_600_000}, 3_605_000)  # 1970-01-01T01:00, sent 5 s later
    assert isinstance(result, Accepted) and result.record["event_time"] == NOW - 5_000


def test_a_correction_that_puts_event_time_before_2000_is_an_error() -> None:
    result = intake({**VISIT, "event_time": MIN_EVENT_TIME_MS + 1_000}, NOW + 2_000)
    assert problems(result) == [
        (
            "event_time",
            "946684799000 is 1999-12-31T23:59:59.000Z as epoch milliseconds, before 2000-01-01, the earliest "
            "time accepted (after clock-skew correction)",
        )
    ]


def test_iso_times_convert_as_before_and_one_before_2000_is_named_as_sent() -> None:
    for sent, expected in (
        ("2000-01-01T00:00:00Z", MIN_EVENT_TIME_MS),
        ("2000-01-01", MIN_EVENT_TIME_MS),
        ("2026-05-01T10:00:00+02:00", 1_777_622_400_000),
    ):
        accepted = intake({**VISIT, "event_time": sent})
        assert isinstance(accepted, Accepted) and accepted.record["event_time"] == expected, sent
    assert problems(intake({**VISIT, "event_time": "1999-12-31T23:59:59Z"})) == [
        (
            "event_time",
            "'1999-12-31T23:59:59Z' is 1999-12-31T23:59:59.000Z, before 2000-01-01, the earliest time "
            "accepted",
        )
    ]


@SETTINGS
@given(st.binary(max_size=40), st.integers(min_value=1, max_value=64))
def test_collector_partitions_keys_as_kafkas_default_partitioner(key: bytes, count: int) -> None:
    all_partitions = list(range(count))
    expected = DefaultPartitioner()(key, all_partitions, all_partitions)
    assert partition_for(key, all_partitions) == expected
    assert partition_for(key, all_partitions) == expected  # memoised: same answer


def test_a_future_event_time_says_after_correction_only_when_sent_at_corrected_it() -> None:
    """Without sent_at nothing is corrected, yet the message said "(after clock-skew correction)", sending the
    client to look for a clock skew the collector never applied."""
    ahead = NOW + 30 * 3_600_000
    assert problems(intake({**VISIT, "event_time": ahead})) == [
        ("event_time", "is 30.0 h in the future; the limit is 23 h")
    ]
    assert problems(intake({**VISIT, "event_time": ahead}, NOW)) == [
        ("event_time", "is 30.0 h in the future; the limit is 23 h (after clock-skew correction)")
    ]


@pytest.mark.parametrize("event_type", ["web_visit", "content_view"])
def test_the_trackers_page_view_id_is_accepted_on_visits_and_content_views(event_type: str) -> None:
    event = {
        "type": event_type,
        "event_id": "e",
        "anonymous_id": "a",
        **BASE[event_type],
        "page_view_id": "pv",
    }
    result = intake(event)
    assert isinstance(result, Accepted), result
    assert result.record["page_view_id"] == "pv"
    assert isinstance(intake({k: v for k, v in event.items() if k != "page_view_id"}), Accepted)


@pytest.mark.parametrize(
    ("page_view_id", "problem"),
    [
        ("x" * 257, "must be at most 256 characters, got 257"),
        ("pv\n1", "must not contain control characters ('\\n' at position 3)"),
    ],
)
def test_a_page_view_id_that_cannot_group_reports_is_refused_naming_the_field(
    page_view_id: str, problem: str
) -> None:
    assert problems(intake({**VISIT, "page_view_id": page_view_id})) == [("page_view_id", problem)]
