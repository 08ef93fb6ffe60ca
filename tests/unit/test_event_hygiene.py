"""The input checks shared by the collector, the worker, the sink and rescore (DESIGN §3 and §6)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.errors import (
    FieldError,
    SchemaValidationError,
    TrailingBytes,
    UnknownFingerprint,
    UnknownSchema,
    WireFormatError,
)
from streams.event_hygiene import (
    HOUR_MS,
    MAX_FUTURE_MS,
    MIN_EVENT_TIME_MS,
    InadmissibleEvent,
    check_admissible,
    early_problem,
    future_problem,
    invalid_reason,
)

RECEIVED = 1_790_000_000_000

pytestmark = pytest.mark.unit


def test_the_future_limit_is_23_hours_and_inclusive() -> None:
    assert MAX_FUTURE_MS == 23 * HOUR_MS
    assert future_problem(RECEIVED + MAX_FUTURE_MS, RECEIVED) is None
    problem = future_problem(RECEIVED + MAX_FUTURE_MS + 1, RECEIVED)
    assert problem == "is 23.0 h in the future; the limit is 23 h"
    assert future_problem(RECEIVED + 48 * HOUR_MS, RECEIVED, limit_ms=HOUR_MS) == (
        "is 48.0 h in the future; the limit is 1 h"
    )


def test_past_and_missing_event_times_are_not_future_problems() -> None:
    assert future_problem(RECEIVED - 400 * 24 * HOUR_MS, RECEIVED) is None
    assert future_problem(None, RECEIVED) is None


def test_an_event_of_nobody_is_refused_naming_the_field() -> None:
    nobody = ({"lead_id": None, "anonymous_id": None}, {"lead_id": "", "anonymous_id": ""}, {})
    for record in (*nobody, {"lead_id": "  ", "anonymous_id": None}, {"lead_id": " ", "anonymous_id": "\t"}):
        with pytest.raises(InadmissibleEvent, match=r"^lead_id: one of lead_id or anonymous_id") as caught:
            check_admissible({**record, "event_time": RECEIVED}, RECEIVED)
        assert caught.value.reason == "no_identity"


def test_an_event_from_the_future_is_refused_naming_the_field() -> None:
    record = {"lead_id": "L1", "event_time": RECEIVED + 30 * HOUR_MS}
    with pytest.raises(InadmissibleEvent, match=r"^event_time: is 30\.0 h in the future") as caught:
        check_admissible(record, RECEIVED)
    assert caught.value.reason == "future_event"


def test_a_lead_or_a_visitor_in_range_is_admitted() -> None:
    check_admissible({"lead_id": "L1", "event_time": RECEIVED + MAX_FUTURE_MS}, RECEIVED)
    check_admissible({"anonymous_id": "a-1", "event_time": RECEIVED - HOUR_MS}, RECEIVED)


def test_the_earliest_event_time_is_2000_in_epoch_milliseconds_and_inclusive() -> None:
    assert int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000) == MIN_EVENT_TIME_MS
    check_admissible({"lead_id": "L1", "event_time": MIN_EVENT_TIME_MS}, RECEIVED)
    assert early_problem(MIN_EVENT_TIME_MS) is None
    with pytest.raises(InadmissibleEvent) as caught:
        check_admissible({"lead_id": "L1", "event_time": MIN_EVENT_TIME_MS - 1}, RECEIVED)
    assert caught.value.reason == "event_time_seconds"
    assert str(caught.value) == (
        "event_time: 946684799999 is 1999-12-31T23:59:59.999Z as epoch milliseconds, before 2000-01-01, "
        "the earliest time accepted"
    )


@pytest.mark.parametrize(
    ("seconds", "meant"),
    [
        (1_764_403_200, "2025-11-29T08:00:00.000Z"),  # the docs' example: 1970-01-21 as milliseconds
        (RECEIVED // 1000, "2026-09-21T14:13:20.000Z"),
        (MIN_EVENT_TIME_MS // 1000, "2000-01-01T00:00:00.000Z"),  # the first second named as seconds
    ],
)
def test_an_event_time_in_epoch_seconds_is_refused_with_the_milliseconds_it_meant(
    seconds: int, meant: str
) -> None:
    """Epoch seconds were scored silently as an event of January 1970, far too old to count."""
    with pytest.raises(InadmissibleEvent) as caught:
        check_admissible({"anonymous_id": "a-1", "event_time": seconds}, RECEIVED)
    assert caught.value.reason == "event_time_seconds"
    assert str(caught.value).startswith(
        f"event_time: {seconds} looks like epoch seconds: as epoch milliseconds"
    )
    assert str(caught.value).endswith(f"; send {seconds * 1000} for {meant}")


@pytest.mark.parametrize("event_time", [0, 1, -1, MIN_EVENT_TIME_MS // 1000 - 1, 10**10, -(2**63)])
def test_other_times_before_2000_are_refused_without_a_seconds_guess(event_time: int) -> None:
    with pytest.raises(InadmissibleEvent) as caught:
        check_admissible({"lead_id": "L1", "event_time": event_time}, RECEIVED)
    assert caught.value.reason == "event_time_seconds"
    message = str(caught.value)
    assert message.startswith(f"event_time: {event_time} is ") and message.endswith(
        "before 2000-01-01, the earliest time accepted"
    )
    assert "looks like epoch seconds" not in message


def test_a_time_sent_as_text_or_a_datetime_is_named_as_sent_and_not_taken_for_seconds() -> None:
    as_ms = 1_764_403_200  # 1970-01-21T10:06:43.200Z: a number in the seconds range, but not sent as one
    assert early_problem(as_ms, "1970-01-21T10:06:43.200") == (
        "'1970-01-21T10:06:43.200' is 1970-01-21T10:06:43.200Z, before 2000-01-01, the earliest time accepted"
    )
    old = int(datetime(1999, 6, 1, tzinfo=UTC).timestamp() * 1000)
    assert early_problem(old, datetime(1999, 6, 1)) == (
        "1999-06-01T00:00:00.000Z is before 2000-01-01, the earliest time accepted"
    )
    assert early_problem(as_ms, float(as_ms)) == early_problem(as_ms)  # 1764403200.0 in JSON
    assert early_problem(None) is None


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (InadmissibleEvent("too_large", "record of 70000 bytes"), "too_large"),
        (InadmissibleEvent("event_time_seconds", "event_time: 1764403200 looks like"), "event_time_seconds"),
        (WireFormatError("bad magic"), "undecodable"),
        (TrailingBytes("download", 80, 83), "trailing_bytes"),
        (UnknownFingerprint(0x1234), "unknown_schema"),
        (UnknownSchema("no such schema"), "unknown_schema"),
        (SchemaValidationError("download", [FieldError("event_time", "expected long")]), "invalid"),
        (RuntimeError("a bug in the core"), "process_error"),
    ],
)
def test_metric_reasons_are_the_stable_ids_the_metric_help_lists(error: BaseException, reason: str) -> None:
    from prometheus_client import CollectorRegistry

    from streams.metrics import Metrics

    assert invalid_reason(error) == reason
    help_text = Metrics(CollectorRegistry()).events_invalid._documentation
    assert reason in help_text
