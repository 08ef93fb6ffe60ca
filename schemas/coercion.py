"""Untrusted (JSON) input checked and normalised against an Avro schema: every bad field named.

Why not fastavro's validation: it stops at the first error and names no path, and JSON needs coercions Avro
does not know (ISO-8601 timestamps to epoch milliseconds, ints for doubles, defaults for missing or null
fields). ``SchemaRegistry.validate`` runs ``coerce_record`` and then the domain rules
(``schemas.domain_rules``); the compiled fast path (``schemas.fast_encode``) must agree with both.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.errors import FieldError

_AVRO_PY: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "long": (int,),
    "double": (int, float),
    "float": (int, float),
    "boolean": (bool,),
    "bytes": (bytes,),
}
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def to_millis(value: Any) -> int:
    """Accept epoch milliseconds, an ISO-8601 string or a datetime; naive times are taken as UTC."""
    if isinstance(value, bool):
        raise ValueError("expected a timestamp, got a boolean")
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"out of range for a timestamp in epoch milliseconds: {_short(value)}")
        return value
    if isinstance(value, float):
        if value.is_integer():
            return to_millis(int(value))
        # e.g. performance.timeOrigin + performance.now(): "expected epoch milliseconds" misread it
        raise ValueError(f"must be whole epoch milliseconds, got {value!r}")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp or epoch milliseconds: {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        # integer arithmetic: the float seconds of timestamp() times 1000 came out a millisecond early for
        # about 1.5% of millisecond times (…43.383 as …43.382)
        millis: int = (value - _EPOCH) // _MILLISECOND
        return millis
    raise ValueError(f"expected epoch milliseconds or an ISO-8601 string, got {type(value).__name__}")


def _type_name(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        return " or ".join(_type_name(x) for x in t)
    return str(t.get("logicalType") or t.get("type"))


def _coerce(t: Any, value: Any, path: str, errors: list[FieldError]) -> Any:
    if isinstance(t, list):  # union: null first in all our schemas
        if value is None:
            if "null" in t:
                return None
            errors.append(FieldError(path, "must not be null"))
            return None
        branches = [b for b in t if b != "null"]
        if len(branches) == 1:
            return _coerce(branches[0], value, path, errors)
        for branch in branches:
            trial: list[FieldError] = []
            out = _coerce(branch, value, path, trial)
            if not trial:
                return out
        errors.append(FieldError(path, f"expected {_type_name(t)}"))
        return None
    if isinstance(t, dict):
        kind = t["type"]
        if t.get("logicalType") == "timestamp-millis":
            try:
                return to_millis(value)
            except ValueError as exc:
                errors.append(FieldError(path, str(exc)))
                return None
        if kind == "record":
            if not isinstance(value, Mapping):
                errors.append(FieldError(path, f"expected an object, got {type(value).__name__}"))
                return None
            rec, sub = coerce_record(t, value, path + ".")
            errors.extend(sub)
            return rec
        if kind == "enum":
            if value not in t["symbols"]:
                errors.append(
                    FieldError(path, f"must be one of {', '.join(t['symbols'])}; got {shown(value)}")
                )
            return value
        if kind == "array":
            if not isinstance(value, list | tuple):
                errors.append(FieldError(path, f"expected an array, got {type(value).__name__}"))
                return []
            return [_coerce(t["items"], v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return _coerce(kind, value, path, errors)
    if value is None:
        errors.append(FieldError(path, f"must not be null (expected {t})"))
        return None
    expected = _AVRO_PY.get(t)
    if expected is None:
        errors.append(FieldError(path, f"unsupported type {t}"))
        return value
    if isinstance(value, bool) and t != "boolean":
        errors.append(FieldError(path, f"expected {t}, got boolean"))
        return value
    if not isinstance(value, expected):
        errors.append(FieldError(path, f"expected {t}, got {type(value).__name__} {shown(value)}"[:200]))
        return value
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON "\ud800": a lone surrogate Avro (UTF-8) cannot hold
            errors.append(
                FieldError(path, f"not valid Unicode: lone surrogate {value[exc.start]!r} at {exc.start}")
            )
            return value
    if t == "int" and isinstance(value, int) and not INT32[0] <= value <= INT32[1]:
        errors.append(FieldError(path, f"out of range for int: {_short(value)}"))
    elif t == "long" and isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        errors.append(FieldError(path, f"out of range for long: {_short(value)}"))
    if t in ("double", "float") and isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            errors.append(FieldError(path, f"out of range for {t}: {_short(value)}"))
            return value
        if not math.isfinite(number):  # JSON NaN/Infinity: would sum into every report as nan
            errors.append(FieldError(path, f"must be a finite number, got {value}"))
        return number
    return value


def shown(value: object) -> str:
    """``repr(value)`` for an error message, never raising: repr() raises ValueError for an int of more than
    4300 digits (int_max_str_digits), which an SDK caller may send where a string is expected."""
    if isinstance(value, int) and value.bit_length() > 14_000:
        return _short(value)
    try:
        return repr(value)
    except ValueError:  # a list or dict holding such an int; the messages name the type before it
        return "holding a number too long to show"


def _short(value: object) -> str:
    """A number for an error message: a 300-digit one is cut, so the message stays readable."""
    if isinstance(value, int) and value.bit_length() > 14_000:
        # str() raises ValueError past 4300 digits (int_max_str_digits); an SDK caller's int may be that long
        return f"a number of {_digits(value)} digits"
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}…({len(text)} digits)"


def _digits(value: int) -> int:
    """The decimal digits of ``value`` without ``str()``."""
    n = abs(value)
    digits = int((n.bit_length() - 1) * 0.30102999566398120) + 1  # log10(2): exact or one short
    return digits + 1 if n >= 10**digits else digits


def coerce_record(
    schema: Mapping[str, Any], data: Mapping[str, Any], prefix: str
) -> tuple[dict[str, Any], list[FieldError]]:
    errors: list[FieldError] = []
    out: dict[str, Any] = {}
    known = set()
    for field in schema["fields"]:
        name = field["name"]
        known.add(name)
        path = prefix + name
        if name not in data or (data[name] is None and "default" in field and field["default"] is not None):
            if "default" in field:
                out[name] = copy.deepcopy(field["default"])
            else:
                errors.append(FieldError(path, "required field is missing"))
            continue
        out[name] = _coerce(field["type"], data[name], path, errors)
    for extra in sorted(map(str, set(data) - known)):  # str: an SDK caller's dict may have an int key
        errors.append(FieldError(prefix + extra, f"unknown field (not in schema {schema['name']})"))
    return out, errors


def validation_errors(schema: Mapping[str, Any], data: Mapping[str, Any]) -> list[FieldError]:
    return coerce_record(schema, data, "")[1]
