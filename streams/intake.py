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
import copy
import hmac
import json
import struct
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.registry import (
    FieldError,
    SchemaError,
    SchemaRegistry,
    SchemaValidationError,
    _domain_checks,
    to_millis,
)

#: ``type`` values the collector accepts; each is also the schema name (topic from the catalogue).
BROWSER_TYPES = ("web_visit", "email_click", "download", "content_view", "lead_identified")
SERVER_TYPES = ("sales_activity",)
EVENT_TYPES = BROWSER_TYPES + SERVER_TYPES
#: Fields the collector reads and removes before schema validation (they are not in the Avro schemas).
ENVELOPE_FIELDS = ("type", "sent_at", "user_agent")
HOUR_MS = 3600 * 1000


@dataclass(frozen=True)
class Limits:
    """Request limits; each breach is a 413 naming the limit."""

    max_body_bytes: int = 512 * 1024
    max_batch: int = 500
    max_future_ms: int = 23 * HOUR_MS  # DESIGN §3: events more than 23 h in the future are rejected


class BodyError(Exception):
    """The request as a whole is unusable; ``status`` is the HTTP answer, ``code`` a stable error id."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
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


def parse_body(raw: bytes, limits: Limits) -> Envelope:
    """One event object, ``{"batch": [...], "sent_at": ..., "write_key": ...}``, or a JSON array of events."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BodyError(400, "invalid_json", f"body is not JSON: {exc}") from None
    if isinstance(data, list):
        envelope = Envelope(events=data)
    elif isinstance(data, dict) and "batch" in data:
        events = data["batch"]
        if not isinstance(events, list):
            raise BodyError(400, "invalid_batch", f"batch: expected an array, got {type(events).__name__}")
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
    event.pop("user_agent", None)
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
    event["source"] = source
    event["received_at"] = received_at
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
    if sent_at is not None:
        try:
            skew = received_at - to_millis(sent_at)
        except ValueError as exc:
            errors.append(FieldError("sent_at", str(exc)))
        else:
            if isinstance(record.get("event_time"), int):
                record["event_time"] += skew
    event_time = record.get("event_time")
    if isinstance(event_time, int) and event_time > received_at + limits.max_future_ms:
        ahead_h = (event_time - received_at) / HOUR_MS
        errors.append(
            FieldError(
                "event_time",
                f"is {ahead_h:.1f} h in the future (after clock-skew correction); "
                f"the limit is {limits.max_future_ms / HOUR_MS:g} h",
            )
        )
    if errors:
        return Rejected(index, event_id, errors)
    return Accepted(index, kind, record)


# --- The fast path: validation and Avro encoding compiled per schema ------------------------------------
#
# Why: profiling the collector under load showed ``SchemaRegistry.validate`` (a generic walk of the schema
# per event) and ``SchemaRegistry.encode`` (fastavro's union matching costs ~1 us per nullable field) as
# the two largest costs per event. ``EventCodec`` compiles each schema once into per-field checks and
# per-field encoders. It is a *fast path only*: it vouches for the common, valid shape of an event (JSON
# types exactly as the schema wants them) and hands anything else — every invalid event, ISO timestamps,
# out-of-range numbers, unknown schema constructs — to the registry, so error messages, coercions and
# rejections stay the registry's own. ``tests/unit/test_collector_intake.py`` checks with generated events
# that both paths accept the same events, build equal records and encode byte-identical messages.


class _Slow(Exception):
    """The fast path cannot vouch for this value: the registry's general path decides."""


_MISSING: Any = object()
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_PACK_DOUBLE = struct.Struct("<d").pack
_PACK_FLOAT = struct.Struct("<f").pack


def _varint(n: int) -> bytes:
    """Avro ``long``: zig-zag, then 7 bits per byte, least significant group first."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = 4096
_SMALL_VARINTS = tuple(_varint(n) for n in range(_SMALL))  # string lengths, union and enum indexes


def _write_long(buf: bytearray, value: int) -> None:
    if 0 <= value < _SMALL:
        buf += _SMALL_VARINTS[value]
        return
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise _Slow
    n = (value << 1) ^ (value >> 63)
    while n > 0x7F:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


Check = Callable[[Any], Any]  # returns the coerced value or raises _Slow
Write = Callable[[bytearray, Any], None]  # appends the Avro encoding or raises _Slow


def _check_string(value: Any) -> Any:
    if type(value) is str:
        return value
    raise _Slow


def _check_long(value: Any) -> Any:
    if type(value) is int:  # bool is not int here, as in the registry
        return value
    raise _Slow


def _check_int(value: Any) -> Any:
    if type(value) is int and _INT_MIN <= value <= _INT_MAX:
        return value
    raise _Slow


def _check_double(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return value
    if kind is int and _LONG_MIN <= value <= _LONG_MAX:
        return float(value)
    raise _Slow


def _check_boolean(value: Any) -> Any:
    if type(value) is bool:
        return value
    raise _Slow


def _write_string(buf: bytearray, value: Any) -> None:
    if type(value) is not str:
        raise _Slow
    data = value.encode()  # a lone surrogate raises UnicodeEncodeError: the registry reports it
    _write_long(buf, len(data))
    buf += data


def _write_long_value(buf: bytearray, value: Any) -> None:
    if type(value) is not int:
        raise _Slow
    _write_long(buf, value)


def _write_int(buf: bytearray, value: Any) -> None:
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise _Slow
    _write_long(buf, value)


def _write_double(buf: bytearray, value: Any) -> None:
    if type(value) is not float:
        raise _Slow
    buf += _PACK_DOUBLE(value)


def _write_float(buf: bytearray, value: Any) -> None:
    if type(value) is not float:
        raise _Slow
    buf += _PACK_FLOAT(value)


def _write_boolean(buf: bytearray, value: Any) -> None:
    if type(value) is not bool:
        raise _Slow
    buf += b"\x01" if value else b"\x00"


_PRIMITIVES: dict[str, tuple[Check, Write]] = {
    "string": (_check_string, _write_string),
    "long": (_check_long, _write_long_value),
    "int": (_check_int, _write_int),
    "double": (_check_double, _write_double),
    "float": (_check_double, _write_float),
    "boolean": (_check_boolean, _write_boolean),
}


def _compile_type(t: Any) -> tuple[Check, Write] | None:
    """Check and writer for one schema type, or None when the fast path does not handle that type."""
    if isinstance(t, str):
        return _PRIMITIVES.get(t)
    if isinstance(t, list):
        branches = [b for b in t if b != "null"]
        if "null" not in t or len(branches) != 1 or len(t) != 2:
            return None
        inner = _compile_type(branches[0])
        if inner is None:
            return None
        return _nullable(inner, null_index=t.index("null"), value_index=t.index(branches[0]))
    if isinstance(t, dict):
        logical = t.get("logicalType")
        if logical == "timestamp-millis":
            # the registry takes ints as they are (ISO strings and floats go the slow way)
            return (_check_long, _write_long_value) if t.get("type") == "long" else None
        if logical is not None:
            return None
        kind = t.get("type")
        if kind == "enum":
            return _enum(list(t["symbols"]))
        if kind == "array":
            items = _compile_type(t["items"])
            return _array(items) if items is not None else None
        if isinstance(kind, str) and kind not in ("record", "map", "fixed", "error"):
            return _compile_type(kind)
    return None


def _nullable(inner: tuple[Check, Write], null_index: int, value_index: int) -> tuple[Check, Write]:
    check_inner, write_inner = inner
    null_tag, value_tag = _SMALL_VARINTS[null_index], _SMALL_VARINTS[value_index]

    def check(value: Any) -> Any:
        return None if value is None else check_inner(value)

    def write(buf: bytearray, value: Any) -> None:
        if value is None:
            buf += null_tag
        else:
            buf += value_tag
            write_inner(buf, value)

    return check, write


def _enum(symbols: list[str]) -> tuple[Check, Write]:
    index = {symbol: i for i, symbol in enumerate(symbols)}

    def check(value: Any) -> Any:
        if type(value) is str and value in index:
            return value
        raise _Slow

    def write(buf: bytearray, value: Any) -> None:
        position = index.get(value) if type(value) is str else None
        if position is None:
            raise _Slow
        _write_long(buf, position)

    return check, write


def _array(items: tuple[Check, Write]) -> tuple[Check, Write]:
    check_item, write_item = items

    def check(value: Any) -> Any:
        if type(value) is list:
            return [check_item(v) for v in value]
        raise _Slow

    def write(buf: bytearray, value: Any) -> None:
        if type(value) is not list:
            raise _Slow
        if value:  # one block of len(value) items, then the empty block that ends the array
            _write_long(buf, len(value))
            for item in value:
                write_item(buf, item)
        buf += b"\x00"

    return check, write


@dataclass(frozen=True)
class _Field:
    name: str
    check: Check
    write: Write
    has_default: bool
    default: Any
    copy_default: bool  # mutable default ([] or {}): a fresh copy per record, as the registry does
    null_takes_default: bool  # the registry replaces an explicit null by a non-null default
    inline: tuple[str, int | None, int | None] | None  # (primitive, null index, value index), see _inline


def _inline(t: Any) -> tuple[str, int | None, int | None] | None:
    """The primitives generated inline (strings, longs and timestamps, doubles, each maybe nullable); other
    types call their ``check``/``write`` closures. Must agree with ``_compile_type``."""
    if isinstance(t, dict) and t.get("logicalType") == "timestamp-millis" and t.get("type") == "long":
        return ("long", None, None)
    if isinstance(t, dict) and "logicalType" not in t and t.get("type") in ("string", "long", "double"):
        return (t["type"], None, None)
    if t in ("string", "long", "double"):
        return (t, None, None)
    if isinstance(t, list) and len(t) == 2 and "null" in t:
        value_index = 1 - t.index("null")
        inner = _inline(t[value_index])
        if inner is not None and inner[1] is None:
            return (inner[0], t.index("null"), value_index)
    return None


_INLINE_CHECK = {"string": "type(v) is str", "long": "type(v) is int", "double": "type(v) is float"}


def _generate(name: str, fields: list[_Field]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Straight-line ``coerce(data)`` and ``encode(record)`` for one schema (one call per event instead of
    a few per field: the generated code is what the loops over ``fields`` would do, unrolled)."""
    namespace: dict[str, Any] = {
        "M": _MISSING,
        "Slow": _Slow,
        "SMALL": _SMALL_VARINTS,
        "S": _SMALL,
        "write_long": _write_long,
        "varint": _varint,
        "LONG_MIN": _LONG_MIN,
        "LONG_MAX": _LONG_MAX,
        "pack_double": _PACK_DOUBLE,
        "domain_checks": _domain_checks,
        "deepcopy": copy.deepcopy,
        "NAME": name,
    }
    coerce = ["def coerce(data):", "    n = 0", "    get = data.get"]
    encode = ["def encode(r, header):", "    buf = bytearray(header)"]
    for i, f in enumerate(fields):
        namespace[f"check{i}"], namespace[f"write{i}"], namespace[f"default{i}"] = f.check, f.write, f.default
        default = f"deepcopy(default{i})" if f.copy_default else f"default{i}"
        missing = f"x{i} = {default}" if f.has_default else "raise Slow"
        coerce += [f"    v = get({f.name!r}, M)", "    if v is M:", f"        {missing}"]
        if f.null_takes_default:
            coerce += ["    elif v is None:", "        n += 1", f"        x{i} = {default}"]
        coerce += ["    else:", "        n += 1"]
        encode += [f"    v = r.get({f.name!r}, M)", "    if v is M:", "        raise Slow"]
        if f.inline is None:
            coerce.append(f"        x{i} = check{i}(v)")
            encode.append(f"    write{i}(buf, v)")
            continue
        kind, null_index, value_index = f.inline
        test = _INLINE_CHECK[kind]
        guard = "" if null_index is None else "v is not None and "
        if kind == "double":  # the registry takes ints for doubles and makes them floats
            coerce += ["        if type(v) is int and LONG_MIN <= v <= LONG_MAX:", "            v = float(v)"]
            coerce += [f"        elif {guard}not {test}:", "            raise Slow"]
        else:
            coerce += [f"        if {guard}not {test}:", "            raise Slow"]
        if null_index is None:
            indent = "    "
        else:
            encode += [
                "    if v is None:",
                f"        buf += {_SMALL_VARINTS[null_index]!r}",
                "    else:",
                f"        buf += {_SMALL_VARINTS[value_index or 0]!r}",
            ]
            indent = "        "
        coerce.append(f"        x{i} = v")
        encode += [f"{indent}if not {test}:", f"{indent}    raise Slow"]
        if kind == "string":
            encode += [
                f"{indent}b = v.encode()",
                f"{indent}size = len(b)",
                f"{indent}buf += SMALL[size] if size < S else varint(size)",
                f"{indent}buf += b",
            ]
        elif kind == "long":
            encode.append(f"{indent}write_long(buf, v)")
        else:
            encode.append(f"{indent}buf += pack_double(v)")
    record = ", ".join(f"{f.name!r}: x{i}" for i, f in enumerate(fields))
    coerce += [
        "    if n != len(data):",
        "        raise Slow",
        f"    out = {{{record}}}",
        "    for _ in domain_checks(NAME, out):",
        "        raise Slow",
        "    return out",
    ]
    encode.append("    return bytes(buf)")
    exec(compile("\n".join([*coerce, "", *encode]), f"<leadpulse codec {name}>", "exec"), namespace)
    return namespace["coerce"], namespace["encode"]


class _CompiledSchema:
    """One flat record schema: a generated validator and encoder (see ``_generate``)."""

    def __init__(self, name: str, header: bytes, fields: list[_Field]) -> None:
        self.name = name
        self.header = header
        self.fields = fields
        self._coerce, self._encode = _generate(name, fields)

    def coerce(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The record ``SchemaRegistry.validate`` would return, or _Slow when it might disagree."""
        result: dict[str, Any] = self._coerce(data)
        return result

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """The bytes ``SchemaRegistry.encode`` would return, or _Slow when it might disagree."""
        result: bytes = self._encode(record, self.header)
        return result


def _compile_schema(name: str, raw: Mapping[str, Any], header: bytes) -> _CompiledSchema | None:
    if raw.get("type") != "record":
        return None
    fields = []
    for spec in raw["fields"]:
        compiled = _compile_type(spec["type"])
        if compiled is None:
            return None
        has_default = "default" in spec
        default = spec.get("default")
        fields.append(
            _Field(
                name=spec["name"],
                check=compiled[0],
                write=compiled[1],
                has_default=has_default,
                default=default,
                copy_default=isinstance(default, list | dict),
                null_takes_default=has_default and default is not None,
                inline=_inline(spec["type"]),
            )
        )
    return _CompiledSchema(name, header, fields)


class EventCodec:
    """``validate`` and ``encode`` with the results of ``SchemaRegistry``'s, faster for the usual event.

    Each call tries the compiled fast path and falls back to the registry whenever the fast path cannot
    vouch for the answer, so every error (and its wording) still comes from the registry.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self._compiled: dict[str, _CompiledSchema] = {}
        for name, version in registry.current.items():
            compiled = _compile_schema(name, version.raw, version.header)
            if compiled is not None:
                self._compiled[name] = compiled

    def compiled(self, name: str) -> bool:
        """Whether ``name`` has a fast path (a schema without one is always handled by the registry)."""
        return name in self._compiled

    def validate(self, name: str, data: Mapping[str, Any]) -> dict[str, Any]:
        compiled = self._compiled.get(name)
        if compiled is not None:
            try:
                return compiled.coerce(data)
            except _Slow:
                pass
        return self.registry.validate(name, data)

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        compiled = self._compiled.get(name)
        if compiled is not None:
            try:
                return compiled.encode(record)
            except (_Slow, ValueError, OverflowError, struct.error):  # UnicodeEncodeError is a ValueError
                pass
        return self.registry.encode(name, record)


_CODECS: weakref.WeakKeyDictionary[SchemaRegistry, EventCodec] = weakref.WeakKeyDictionary()


def codec_for(registry: SchemaRegistry) -> EventCodec:
    """The registry's codec, compiled once."""
    codec = _CODECS.get(registry)
    if codec is None:
        codec = _CODECS[registry] = EventCodec(registry)
    return codec
