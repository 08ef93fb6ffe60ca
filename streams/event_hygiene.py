"""The checks every input event passes before it is scored, wherever it entered Kafka.

Why here and not only in the collector: events also arrive from the producer SDK, ``leadpulse produce`` or
any Kafka client. DESIGN §3 (events more than 23 h in the future are rejected) and §6 (every event names a
lead_id or an anonymous_id) must hold for all of them, so the collector, the worker and ``rescore`` share
these functions. So must "event_time is epoch milliseconds": a time before 2000 is refused, because epoch
*seconds* (``1764403200``, 1970-01-21 as milliseconds) were otherwise scored silently as far too old to
count. The worker dead-letters a failing record; the metric label is the error's ``reason``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from schemas.domain_rules import first_identity_problem
from schemas.errors import (
    FieldError,
    SchemaError,
    SchemaValidationError,
    TrailingBytes,
    UnknownFingerprint,
    UnknownSchema,
)

HOUR_MS = 3600 * 1000
#: DESIGN §3. Clock skew between trackers and servers is corrected by the collector before this check.
MAX_FUTURE_MS = 23 * HOUR_MS
#: The earliest ``event_time`` admitted: 2000-01-01T00:00:00Z in epoch milliseconds. Anything earlier is taken
#: as not epoch milliseconds: epoch seconds of every date from 1970 to the year 31,969 are below it (today's,
#: ~1.76e9, are January 1970 as milliseconds). The cost is real history from before 2000, which B2B web,
#: email and CRM data hardly has (and the default rules decay it to nothing); it is refused naming the field,
#: never dropped silently. A constant, not a setting: the collector, the SDK, the worker, the sink and
#: rescore must judge a record the same way.
MIN_EVENT_TIME_MS = 946_684_800_000
#: An integer from ``MIN_EVENT_TIME_MS // 1000`` up to this (2000-01-01 to 2286-11-20 as epoch seconds) is
#: named as probable epoch seconds, with the milliseconds it probably meant.
SECONDS_HINT_BELOW = 10**10


class InadmissibleEvent(ValueError):
    """A decodable record the worker must not score; ``reason`` is a stable id for metrics and dashboards."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def future_problem(event_time: object, received_at_ms: int, limit_ms: int = MAX_FUTURE_MS) -> str | None:
    """The ``event_time`` problem of an event received at ``received_at_ms``, or None when it is in range."""
    if not isinstance(event_time, int) or event_time <= received_at_ms + limit_ms:
        return None
    ahead_h = (event_time - received_at_ms) / HOUR_MS
    return f"is {ahead_h:.1f} h in the future; the limit is {limit_ms / HOUR_MS:g} h"


def _utc(ms: int) -> str:
    """``ms`` as an ISO-8601 UTC time for an error message."""
    try:
        return (
            datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
    except (OverflowError, ValueError, OSError):  # only times before the year 1 reach here
        return "before the year 1"


def early_problem(event_time: object, as_sent: object = None) -> str | None:
    """The problem of a time (epoch milliseconds) before ``MIN_EVENT_TIME_MS``, or None when it is not.

    ``as_sent`` is the value as the client wrote it when that differs from ``event_time`` (an ISO string, a
    datetime, a float): the message names it, and only a number there is named as probable epoch seconds.
    The message does not name the field, so it serves ``sent_at`` too."""
    if not isinstance(event_time, int) or event_time >= MIN_EVENT_TIME_MS:
        return None
    sent = event_time if as_sent is None else as_sent
    limit = "before 2000-01-01, the earliest time accepted"
    if isinstance(sent, int | float) and not isinstance(sent, bool):
        if MIN_EVENT_TIME_MS // 1000 <= event_time < SECONDS_HINT_BELOW:
            meant = event_time * 1000
            return (
                f"{event_time} looks like epoch seconds: as epoch milliseconds it is {_utc(event_time)}, "
                f"{limit}; send {meant} for {_utc(meant)}"
            )
        return f"{event_time} is {_utc(event_time)} as epoch milliseconds, {limit}"
    if isinstance(sent, str):
        return f"{sent!r} is {_utc(event_time)}, {limit}"
    return f"{_utc(event_time)} is {limit}"  # a datetime


def sent_time_errors(
    record: Mapping[str, Any], as_sent: Mapping[str, Any], now_ms: int, *, input_event: bool
) -> list[FieldError]:
    """The time fields a producer (the SDK, ``leadpulse produce``) must not send, each named, for a record
    already validated (times as epoch milliseconds); ``as_sent`` holds them as the caller wrote them.

    ``event_time``: more than 23 h ahead (DESIGN §3) or, for an input event, before 2000. ``received_at``
    (when the collector received the event, by its clock; null from the SDK, kept by a replay of stored
    events) gets the same two bounds: it is epoch milliseconds too, so seconds, a negative number or a time
    far ahead are mistakes that would be stored as the time of receipt (docs/ingestion.md)."""
    errors = []
    for name in ("event_time", "received_at"):
        value = record.get(name)
        if value is None:
            continue
        problem = future_problem(value, now_ms)
        if problem is None and (input_event or name == "received_at"):
            problem = early_problem(value, as_sent.get(name))
        if problem is not None:
            errors.append(FieldError(name, problem))
    return errors


def check_admissible(record: Mapping[str, Any], received_at_ms: int) -> None:
    """Raise InadmissibleEvent naming the field when the record must not reach the scoring core.

    ``received_at_ms`` is when the event entered Kafka (the record's timestamp), so re-reading a batch after
    a crash judges it the same way."""
    lead_id, anonymous_id = record.get("lead_id"), record.get("anonymous_id")
    if not ((lead_id or "").strip() or (anonymous_id or "").strip()):  # blanks identify nobody
        raise InadmissibleEvent(
            "no_identity", "lead_id: one of lead_id or anonymous_id is required (record has neither)"
        )
    bad_id = bad_identity(record)  # from producers that bypass the collector and the SDK
    if bad_id is not None:
        raise bad_id
    event_time = record.get("event_time")
    # one comparison more than the future limit alone costs, in the normal case
    if isinstance(event_time, int) and not MIN_EVENT_TIME_MS <= event_time <= received_at_ms + MAX_FUTURE_MS:
        if event_time < MIN_EVENT_TIME_MS:
            raise InadmissibleEvent("event_time_seconds", f"event_time: {early_problem(event_time)}")
        raise InadmissibleEvent("future_event", f"event_time: {future_problem(event_time, received_at_ms)}")


def bad_identity(record: Mapping[str, Any]) -> InadmissibleEvent | None:
    """The first id of ``record`` that cannot be used, as the dead letter's reason (``identity_problems``)."""
    found = first_identity_problem(record)
    return None if found is None else InadmissibleEvent("bad_identity", f"{found[0]}: {found[1]}")


def invalid_reason(exc: BaseException) -> str:
    """The ``reason`` label of ``leadpulse_events_invalid_total`` for an error that dead-lettered a record."""
    if isinstance(exc, InadmissibleEvent):
        return exc.reason
    if isinstance(exc, UnknownFingerprint | UnknownSchema):
        return "unknown_schema"
    if isinstance(exc, SchemaValidationError):
        return "invalid"
    if isinstance(exc, TrailingBytes):  # decodes, but not with the schema its fingerprint names
        return "trailing_bytes"
    if isinstance(exc, SchemaError):
        return "undecodable"
    return "process_error"
