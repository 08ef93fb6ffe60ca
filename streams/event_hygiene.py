"""The checks every input event passes before it is scored, wherever it entered Kafka.

Why here and not only in the collector: events also arrive from the producer SDK, ``leadpulse produce`` or
any Kafka client. DESIGN §3 (events more than 23 h in the future are rejected) and §6 (every event names a
lead_id or an anonymous_id) must hold for all of them, so the collector, the worker and ``rescore`` share
these functions. The worker dead-letters a failing record; the metric label is the error's ``reason``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.domain_rules import first_identity_problem
from schemas.errors import (
    SchemaError,
    SchemaValidationError,
    TrailingBytes,
    UnknownFingerprint,
    UnknownSchema,
)

HOUR_MS = 3600 * 1000
#: DESIGN §3. Clock skew between trackers and servers is corrected by the collector before this check.
MAX_FUTURE_MS = 23 * HOUR_MS


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
    problem = future_problem(record.get("event_time"), received_at_ms)
    if problem is not None:
        raise InadmissibleEvent("future_event", f"event_time: {problem}")


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
