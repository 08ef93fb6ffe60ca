"""What a record must meet beyond its Avro types: usable ids, an identity per behavioural event, value ranges.

Why apart from the coercion: these are leadpulse's rules, not Avro's, and they have more users than the
registry's validation: ``identity_problems`` also serves the worker's and rescore's admissibility check and
the sink (``streams.event_hygiene``), and ``domain_checks`` the compiled validator (``schemas.fast_encode``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from schemas.coercion import INT64
from schemas.errors import FieldError

BEHAVIOURAL = ("web_visit", "email_click", "download", "content_view")


#: Longest lead_id / anonymous_id / event_id accepted. Ids key partitions, state and ClickHouse rows and go
#: into webhook headers; a 60 KB one was accepted and keyed (webhook audit).
MAX_ID_CHARS = 256
#: Longest dwell one content view may report: a day of continuous visibility (the tracker reports the time
#: an element was visible in a visible tab, then starts again). The daily views sum dwell as Int64: two views
#: of 2**62 ms, which the public write key could send, wrapped the content report's dwell negative, and one
#: swamped its mean.
MAX_DWELL_MS = 24 * 3_600_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
IDENTITY_FIELDS = ("event_id", "lead_id", "anonymous_id")


def identity_problem(value: str) -> str | None:
    """Why an id cannot be used, or None. Control characters: a line break in a lead id stopped the
    notifier's partition (it cannot go into an HTTP header) and splits log lines and CSV rows."""
    if len(value) > MAX_ID_CHARS:
        return f"must be at most {MAX_ID_CHARS} characters, got {len(value)}"
    if not value.isprintable():  # C speed for the usual id; the exact rule below
        found = _CONTROL.search(value)
        if found is not None:
            return f"must not contain control characters ({found.group()!r} at position {found.start() + 1})"
    return None


def identity_problems(record: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, problem) for each id of ``record`` that cannot be used: one rule for the registry's validation,
    the worker's and rescore's admissibility check and the sink's undecoded fast path."""
    for field in IDENTITY_FIELDS:
        value = record.get(field)
        if isinstance(value, str):
            problem = identity_problem(value)
            if problem is not None:
                yield field, problem


def first_identity_problem(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """``identity_problems``' first answer without a generator: the admissibility check runs it per record
    in the worker and the sink."""
    for field in IDENTITY_FIELDS:
        value = record.get(field)
        if isinstance(value, str):
            problem = identity_problem(value)
            if problem is not None:
                return field, problem
    return None


def domain_checks(name: str, record: Mapping[str, Any]) -> Iterable[FieldError]:
    for field, problem in identity_problems(record):
        yield FieldError(field, problem)
    if "event_id" in record and isinstance(record["event_id"], str) and not record["event_id"].strip():
        yield FieldError("event_id", "must not be empty")
    lead_id = record.get("lead_id")
    if name not in BEHAVIOURAL and isinstance(lead_id, str) and not lead_id.strip():
        # required here: an empty one was accepted and keyed by nothing (the worker then dead-lettered a
        # sales activity as having no identity) or made a profile of the lead "" for the anonymous visitor
        yield FieldError("lead_id", "must not be empty")
    if name in BEHAVIOURAL:
        anonymous_id = record.get("anonymous_id")
        if not lead_id and not anonymous_id:
            yield FieldError("lead_id", "one of lead_id or anonymous_id is required")
        for field, value in (("lead_id", lead_id), ("anonymous_id", anonymous_id)):
            if isinstance(value, str) and value and not value.strip():  # it would key the event by blanks
                yield FieldError(field, "must not be blank (whitespace only)")
    page_view_id = record.get("page_view_id")
    if isinstance(page_view_id, str):  # groups a page's reports in the worker's state and the reports
        page_view_problem = identity_problem(page_view_id)
        if page_view_problem is not None:
            yield FieldError("page_view_id", page_view_problem)
    if name == "content_view":
        dwell = record.get("dwell_ms")
        if isinstance(dwell, int) and INT64[0] <= dwell < 0:  # out of range is reported by the type check
            yield FieldError("dwell_ms", f"must be >= 0, got {dwell}")
        elif isinstance(dwell, int) and MAX_DWELL_MS < dwell <= INT64[1]:
            yield FieldError("dwell_ms", f"must be at most {MAX_DWELL_MS} (24 hours), got {dwell}")
        pct = record.get("percent_viewed")
        if isinstance(pct, float) and math.isfinite(pct) and not 0.0 <= pct <= 100.0:
            yield FieldError("percent_viewed", f"must be between 0 and 100, got {pct}")
