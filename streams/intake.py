"""The collector's pure core: parse a request body, authenticate its write key, normalise each event.

Kept free of HTTP and Kafka so every rule a client can hit (batch shapes, limits, clock-skew correction,
the 23 h future limit, per-event errors) is tested without a server. ``streams/collector.py`` is the
aiohttp shell around it.

Clock-skew correction (Segment-style): a browser's clock can be hours off. The client stamps each event's
``event_time`` and the request's ``sent_at`` with the *same* wrong clock, so ``received_at - sent_at`` is the
skew (plus network delay), and the corrected event time is ``event_time + (received_at - sent_at)``. Without
``sent_at`` the client's ``event_time`` is trusted as is (server-side sources have good clocks).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.coercion import to_millis
from schemas.errors import FieldError, SchemaError, SchemaValidationError
from schemas.fast_codec import EventCodec, codec_for
from schemas.registry import SchemaRegistry
from streams.event_hygiene import (
    MAX_FUTURE_MS,
    MIN_EVENT_TIME_MS,
    SECONDS_HINT_BELOW,
    early_problem,
    future_problem,
)
from streams.topics import MAX_INPUT_RECORD_BYTES

#: ``type`` values the collector accepts; each is also the schema name (topic from the catalogue).
BROWSER_TYPES = ("web_visit", "email_click", "download", "content_view", "lead_identified")
SERVER_TYPES = ("sales_activity",)
EVENT_TYPES = BROWSER_TYPES + SERVER_TYPES
#: Fields the collector reads and removes before schema validation (they are not in the Avro schemas).
ENVELOPE_FIELDS = ("type", "sent_at", "user_agent")
#: ``lead_identified`` fields only a server-side key may set. A browser key is public (anyone can read it
#: from the page), and these disqualify a lead (flags), route it (owner) and choose its SLA (segment).
CRM_PROFILE_FIELDS = ("flags", "owner", "segment")
#: The keys of a batch object (``{"batch": [...], ...}``); anything else is refused.
BATCH_FIELDS = ("batch", "sent_at", "write_key")


@dataclass(frozen=True)
class Limits:
    """Request limits; each breach is a 413 naming the limit."""

    max_body_bytes: int = 512 * 1024
    max_batch: int = 500
    max_future_ms: int = MAX_FUTURE_MS


class BodyError(Exception):
    """The request as a whole is unusable; ``status`` is the HTTP answer, ``code`` a stable error id;
    ``events`` how many events the body held, when it was parsed far enough to know (else None)."""

    def __init__(self, status: int, code: str, message: str, events: int | None = None) -> None:
        self.status = status
        self.code = code
        self.events = events
        super().__init__(message)


@dataclass(frozen=True)
class Envelope:
    """A parsed body: the raw events plus request-level ``sent_at`` and ``write_key`` (browser tracker)."""

    events: list[Any]
    sent_at: Any = None
    write_key: str | None = None


@dataclass(frozen=True)
class Accepted:
    index: int
    schema: str
    record: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    index: int
    event_id: str | None
    errors: list[FieldError]

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "event_id": self.event_id,
            "errors": [{"field": e.field, "problem": e.problem} for e in self.errors],
        }


@dataclass
class Outcome:
    """Per-request tally that becomes the response body."""

    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    bots_dropped: int = 0

    @property
    def status(self) -> int:
        """202 all accepted (bots silently dropped), 207 some rejected, 400 every event rejected."""
        if not self.rejected:
            return 202
        return 207 if self.accepted else 400

    def body(self) -> dict[str, Any]:
        return {
            "accepted": len(self.accepted),
            "rejected": len(self.rejected),
            "bots_dropped": self.bots_dropped,
            "errors": [r.as_json() for r in self.rejected],
        }


def too_large(accepted: Accepted, size: int) -> Rejected:
    """An event valid by its schema whose record is over the per-record input limit (a huge url, say)."""
    event_id = accepted.record.get("event_id")
    problem = f"encodes to {size} bytes; the input event limit is {MAX_INPUT_RECORD_BYTES} bytes"
    return Rejected(
        accepted.index, event_id if isinstance(event_id, str) else None, [FieldError("<event>", problem)]
    )


#: Content-Encodings the collector decodes itself (aiohttp's own decoding is off: a zstd or brotli body it
#: could not decode dropped the connection or answered plain text, never the JSON error a client reads).
ENCODINGS = ("identity", "gzip", "x-gzip", "deflate")


def decompress(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its Content-Encoding undone, refused past ``limit`` bytes decoded (a gzip bomb)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return raw
    if encoding not in ENCODINGS:
        raise BodyError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r}: send gzip, deflate or no encoding"
        )
    # gzip header for gzip, zlib header (or raw deflate, as some clients send it) for deflate
    wbits = 16 + zlib.MAX_WBITS if encoding in ("gzip", "x-gzip") else -zlib.MAX_WBITS
    if encoding == "deflate" and raw[:1] == b"\x78":
        wbits = zlib.MAX_WBITS
    members = encoding in ("gzip", "x-gzip")
    out = bytearray()  # not bytes: a body of thousands of tiny gzip members would copy it once per member
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(raw, limit + 1 - len(out))  # >= 1 here: 0 would mean "no limit"
            if len(out) <= limit and not inflater.eof:
                out += inflater.flush()
        except zlib.error as exc:
            raise BodyError(400, "undecodable_body", f"body is not valid {encoding}: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise BodyError(413, "body_too_large", f"body decodes to more than the limit of {limit} bytes")
        if not inflater.eof:
            raise BodyError(400, "undecodable_body", f"body is truncated {encoding}")
        # gzip is a series of members (RFC 1952; streaming compressors write one per flushed chunk): decoding
        # the first alone cut the body short. Zero bytes after a member are padding, as the gzip module says.
        raw = inflater.unused_data.lstrip(b"\x00") if members else b""
        if not raw:
            return bytes(out)


def parse_body(raw: bytes, limits: Limits) -> Envelope:
    """One event object, ``{"batch": [...], "sent_at": ..., "write_key": ...}``, or a JSON array of events."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BodyError(400, "invalid_json", f"body is not JSON: {exc}") from None
    except RecursionError:  # '[[[[…' 100k deep: json raises instead of answering
        raise BodyError(400, "invalid_json", "body is not JSON we accept: nested too deeply") from None
    except ValueError:  # not a JSONDecodeError: an integer longer than Python converts (int_max_str_digits)
        digits = sys.get_int_max_str_digits()
        raise BodyError(
            400, "invalid_json", f"body is not JSON we accept: a number has more than {digits} digits"
        ) from None
    if isinstance(data, list):
        envelope = Envelope(events=data)
    elif isinstance(data, dict) and "batch" in data:
        events = data["batch"]
        if not isinstance(events, list):
            raise BodyError(400, "invalid_batch", f"batch: expected an array, got {type(events).__name__}")
        unknown = sorted(set(data) - set(BATCH_FIELDS))
        if unknown:  # a typo such as sentAt would silently lose the clock-skew correction
            raise BodyError(
                400,
                "invalid_batch",
                f"unknown batch field(s) {unknown}; a batch object has {', '.join(BATCH_FIELDS)}",
            )
        write_key = data.get("write_key")
        envelope = Envelope(events, data.get("sent_at"), write_key if isinstance(write_key, str) else None)
    elif isinstance(data, dict):
        write_key = data.pop("write_key", None)
        envelope = Envelope([data], None, write_key if isinstance(write_key, str) else None)
    else:
        raise BodyError(
            400,
            "invalid_body",
            f"expected an event object, a batch object or an array, got {type(data).__name__}",
        )
    if not envelope.events:
        raise BodyError(400, "empty_batch", "batch: no events")
    if len(envelope.events) > limits.max_batch:
        raise BodyError(
            413,
            "batch_too_large",
            f"batch: {len(envelope.events)} events, the limit is {limits.max_batch} per request",
            events=len(envelope.events),
        )
    return envelope


def key_from_authorization(header: str | None) -> str | None:
    """``Bearer <key>`` or HTTP basic auth with the key as user name (password ignored)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            user = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return None


def source_for_key(keys: Mapping[str, bytes], presented: str | None) -> str | None:
    """The source whose write key equals ``presented``; compares against every key in constant time each,
    without stopping at the first match, so response time does not tell which key prefix was right."""
    if not presented:
        return None
    candidate = presented.encode("utf-8")
    found = None
    for source, key in keys.items():
        if hmac.compare_digest(candidate, key):
            found = source
    return found


def seconds_clock(sent_at: Any, received_at: int) -> bool:
    """Whether ``sent_at`` is epoch seconds: a number that read as seconds is within a day of the receipt.

    Any other time before 2000 is a client clock that is wrong (a device reset to 1970), which is what the
    skew correction is for; corrected by a ``sent_at`` in seconds, an ``event_time`` in seconds would land
    near the receipt time with its offsets shrunk a thousandfold, silently."""
    if not isinstance(sent_at, int | float) or isinstance(sent_at, bool):
        return False
    return (
        MIN_EVENT_TIME_MS // 1000 <= sent_at < SECONDS_HINT_BELOW
        and abs(sent_at * 1000 - received_at) <= 24 * 3_600_000
    )


def normalise_event(
    raw: Any,
    index: int,
    *,
    source: str,
    received_at: int,
    batch_sent_at: Any,
    registry: SchemaRegistry,
    limits: Limits,
    allowed_types: tuple[str, ...] = EVENT_TYPES,
    codec: EventCodec | None = None,
) -> Accepted | Rejected:
    """Validate one event and stamp it: ``source`` from the key, server ``received_at``, corrected time.

    ``codec`` is ``codec_for(registry)`` passed in by a caller that normalises many events."""
    if not isinstance(raw, dict):
        return Rejected(
            index, None, [FieldError("<event>", f"expected a JSON object, got {type(raw).__name__}")]
        )
    event = dict(raw)
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    kind = event.pop("type", None)
    sent_at = event.pop("sent_at", batch_sent_at)
    user_agent = event.pop("user_agent", None)
    if user_agent is not None and not isinstance(user_agent, str):  # it decides bot filtering: no guessing
        return Rejected(
            index, event_id, [FieldError("user_agent", f"expected a string, got {type(user_agent).__name__}")]
        )
    if kind not in EVENT_TYPES:
        problem = "required field is missing" if kind is None else f"unknown type {kind!r}"
        return Rejected(index, event_id, [FieldError("type", f"{problem}; one of {', '.join(EVENT_TYPES)}")])
    if kind not in allowed_types:
        return Rejected(
            index,
            event_id,
            [
                FieldError(
                    "type", f"{kind} is not accepted from source {source!r}: use a server-side write key"
                )
            ],
        )
    if kind == "lead_identified" and not set(SERVER_TYPES) <= set(allowed_types):
        crm_only = [name for name in CRM_PROFILE_FIELDS if event.get(name) not in (None, "", [])]
        if crm_only:
            problem = f"set only with a server-side write key; source {source!r} is a browser key (public)"
            return Rejected(index, event_id, [FieldError(name, problem) for name in crm_only])
    event["source"] = source
    event["received_at"] = received_at
    # The skew correction applies to a time the client stamped with its own clock; a missing event_time
    # becomes the server's receipt time, which has no client skew to remove.
    client_time = "event_time" in event
    event.setdefault("event_time", received_at)
    errors: list[FieldError] = []
    try:
        record = (codec or codec_for(registry)).validate(kind, event)
    except SchemaValidationError as exc:
        errors.extend(exc.errors)
        record = {}
    except SchemaError as exc:
        errors.append(FieldError("<event>", str(exc)))
        record = {}
    sent_time = record.get("event_time")  # as the client stamped it, before the correction
    corrected = True  # False: the correction failed, so the time is not judged
    shifted = False  # whether sent_at moved event_time (the messages say so)
    if sent_at is not None:
        try:
            sent_ms = to_millis(sent_at)
        except ValueError as exc:
            errors.append(FieldError("sent_at", str(exc)))
        else:
            # without a client event_time there is nothing to correct, and a sent_at in seconds does no harm
            if client_time and isinstance(sent_time, int):
                seconds = early_problem(sent_ms, sent_at) if seconds_clock(sent_at, received_at) else None
                if seconds is not None:
                    errors.append(FieldError("sent_at", seconds))
                else:
                    record["event_time"] = sent_time + received_at - sent_ms
                    shifted = True
                    if not -(2**63) <= record["event_time"] < 2**63:  # Avro long; the encoder would raise
                        problem = "clock-skew correction puts event_time out of range"
                        errors.append(FieldError("sent_at", problem))
                        corrected = False
    # Before 2000 after the correction: not epoch milliseconds (event_hygiene.MIN_EVENT_TIME_MS). Judged after
    # it, since a device clock reset to 1970 is what sent_at corrects. The message names the time as the
    # client sent it, so epoch seconds are called so, with the milliseconds they probably meant.
    early = early_problem(record.get("event_time")) if client_time and corrected else None
    if early is not None:
        before = early_problem(sent_time, event.get("event_time"))
        early = before if before is not None else f"{early} (after clock-skew correction)"
        errors.append(FieldError("event_time", early))
    ahead = future_problem(record.get("event_time"), received_at, limits.max_future_ms) if corrected else None
    if ahead is not None:
        suffix = " (after clock-skew correction)" if shifted else ""
        errors.append(FieldError("event_time", ahead + suffix))
    if errors:
        return Rejected(index, event_id, errors)
    return Accepted(index, kind, record)
