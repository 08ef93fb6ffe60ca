"""The input checks shared by the collector, the worker, the sink and rescore (DESIGN §3 and §6)."""

from __future__ import annotations

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
    InadmissibleEvent,
    check_admissible,
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


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (InadmissibleEvent("too_large", "record of 70000 bytes"), "too_large"),
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
