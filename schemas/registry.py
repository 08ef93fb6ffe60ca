"""Avro schemas of every leadpulse record and their Single Object Encoding.

Why a registry of our own instead of a schema-registry service: the wire format (DESIGN §6) is Avro Single
Object Encoding, where every message carries the CRC-64-AVRO fingerprint of its writer schema. A reader only
needs every schema version that was ever written, and those live in ``schemas/`` (current) and
``schemas/history/`` (older versions), so decoding needs no network round trip and no extra service.
"""

from __future__ import annotations

import copy
import io
import json
import math
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent
SOE_MAGIC = b"\xc3\x01"
HEADER_LEN = 10

# The CRC-64-AVRO ("Rabin") fingerprint, exactly as the reference algorithm in the Avro specification.
_EMPTY64 = 0xC15D213AA4D7A795


def _fp_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return tuple(table)


_FP_TABLE = _fp_table()


def crc64_avro(data: bytes) -> int:
    """64-bit Rabin fingerprint of ``data`` (the spec's ``fingerprint64``)."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def schema_fingerprint(schema: Mapping[str, Any] | str) -> int:
    """Fingerprint of a schema's Parsing Canonical Form, as Single Object Encoding requires."""
    return crc64_avro(
        to_parsing_canonical_form(dict(schema) if isinstance(schema, Mapping) else schema).encode()
    )


class SchemaError(Exception):
    """Base of every error the registry raises; carries a message fit for a user or a dead letter."""


class WireFormatError(SchemaError):
    """Bytes are not a Single Object Encoded Avro message (bad magic, truncated, corrupt body)."""


class TrailingBytes(WireFormatError):
    """Bytes left after a complete record: the body was written with another schema than the one its
    fingerprint names (a field more, a longer type), so the fields read may not be the fields written."""

    def __init__(self, schema: str, end: int, size: int) -> None:
        self.schema = schema
        self.count = size - end
        plural = "byte" if self.count == 1 else "bytes"
        super().__init__(
            f"{self.count} trailing {plural} after the {schema} record (it ends at byte {end} of {size}): "
            "the writer's schema does not match its fingerprint; the producer must encode with the schema "
            "whose fingerprint it writes"
        )


class UnknownFingerprint(SchemaError):
    """The writer schema's fingerprint is not among the schemas in ``schemas/``."""

    def __init__(self, fingerprint: int) -> None:
        self.fingerprint = fingerprint
        super().__init__(
            f"unknown writer schema fingerprint {fingerprint:#018x}: "
            "add that schema version to schemas/history/"
        )


class UnknownSchema(SchemaError):
    """No schema of that name exists."""


@dataclass(frozen=True)
class FieldError:
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


class SchemaValidationError(SchemaError):
    """A record does not fit its schema; ``errors`` names every bad field."""

    def __init__(self, schema: str, errors: list[FieldError]) -> None:
        self.schema = schema
        self.errors = errors
        super().__init__(f"invalid {schema}: " + "; ".join(str(e) for e in errors))


@dataclass(frozen=True)
class SchemaVersion:
    name: str  # file stem without version, e.g. "web_visit"
    full_name: str  # Avro full name, e.g. "io.leadpulse.WebVisit"
    path: Path
    raw: dict[str, Any]
    parsed: Any  # fastavro parsed schema with logical types stripped (timestamps stay int milliseconds)
    fingerprint: int

    @property
    def header(self) -> bytes:
        return SOE_MAGIC + struct.pack("<Q", self.fingerprint)


def _strip_logical_types(node: Any) -> Any:
    """Timestamps travel as int milliseconds through leadpulse; the logical type stays in the .avsc (and the
    canonical form ignores it), so wire bytes and fingerprints are unchanged."""
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def _load(path: Path) -> SchemaVersion:
    raw = json.loads(path.read_text())
    full_name = f"{raw['namespace']}.{raw['name']}" if "namespace" in raw else raw["name"]
    return SchemaVersion(
        name=path.name.split(".")[0],
        full_name=full_name,
        path=path,
        raw=raw,
        parsed=fastavro.parse_schema(_strip_logical_types(copy.deepcopy(raw))),
        fingerprint=schema_fingerprint(raw),
    )


class SchemaRegistry:
    """Every schema version under a directory, parsed once; encodes and decodes Single Object Encoding."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self.current: dict[str, SchemaVersion] = {}
        self.by_fingerprint: dict[int, SchemaVersion] = {}
        for path in sorted(directory.glob("*.avsc")):
            version = _load(path)
            self.current[version.name] = version
            self.by_fingerprint[version.fingerprint] = version
        for path in sorted((directory / "history").glob("*.avsc")):
            version = _load(path)
            self.by_fingerprint.setdefault(version.fingerprint, version)
        self._by_full_name = {v.full_name: v for v in self.current.values()}

    @property
    def names(self) -> list[str]:
        return sorted(self.current)

    def schema(self, name: str) -> SchemaVersion:
        try:
            return self.current[name]
        except KeyError:
            raise UnknownSchema(f"no schema named {name!r}; known: {', '.join(self.names)}") from None

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Single Object Encoding of an already valid record (see ``validate`` for untrusted input)."""
        version = self.schema(name)
        buf = io.BytesIO()
        buf.write(version.header)
        try:
            fastavro.schemaless_writer(buf, version.parsed, dict(record))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SchemaValidationError(
                name, validation_errors(version.raw, record) or [FieldError("<record>", str(exc))]
            ) from exc
        return buf.getvalue()

    def writer_of(self, data: bytes) -> SchemaVersion:
        if len(data) < HEADER_LEN or data[:2] != SOE_MAGIC:
            raise WireFormatError(
                "not Avro Single Object Encoding: expected header C3 01 + 8-byte fingerprint, "
                f"got {data[:10].hex()!r}"
            )
        (fingerprint,) = struct.unpack_from("<Q", data, 2)
        try:
            return self.by_fingerprint[fingerprint]
        except KeyError:
            raise UnknownFingerprint(fingerprint) from None

    def decode(self, data: bytes, expect: str | None = None) -> tuple[str, dict[str, Any]]:
        """Decode with the writer's schema resolved to the current reader schema of the same record name."""
        writer = self.writer_of(data)
        reader = self._by_full_name.get(writer.full_name)
        if reader is None:
            raise UnknownSchema(f"writer schema {writer.full_name} has no current version in schemas/")
        if expect is not None and reader.name != expect:
            raise SchemaValidationError(expect, [FieldError("<record>", f"got a {reader.name} record")])
        body = io.BytesIO(data)
        body.seek(HEADER_LEN)
        try:
            # same schema on both sides (the common case): skip fastavro's resolution pass (~20% faster)
            resolve_to = None if reader is writer else reader.parsed
            record = fastavro.schemaless_reader(body, writer.parsed, resolve_to)
        except Exception as exc:  # fastavro raises many types on corrupt bodies; all mean "bad bytes"
            raise WireFormatError(f"corrupt {writer.name} body: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise WireFormatError(f"{writer.name} body did not decode to a record")
        if body.tell() != len(data):  # fastavro stops at the record's last field and says nothing
            raise TrailingBytes(writer.name, body.tell(), len(data))
        return reader.name, record

    def validate(self, name: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Check and normalise untrusted (JSON) input; raises SchemaValidationError naming every bad field."""
        version = self.schema(name)
        record, errors = _coerce_record(version.raw, data, "")
        errors.extend(_domain_checks(name, record))
        if errors:
            raise SchemaValidationError(name, errors)
        return record


@lru_cache(maxsize=1)
def default_registry() -> SchemaRegistry:
    return SchemaRegistry()


def validation_errors(schema: Mapping[str, Any], data: Mapping[str, Any]) -> list[FieldError]:
    return _coerce_record(schema, data, "")[1]


# --- JSON input coercion -------------------------------------------------------------------------

_AVRO_PY: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "long": (int,),
    "double": (int, float),
    "float": (int, float),
    "boolean": (bool,),
    "bytes": (bytes,),
}
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def to_millis(value: Any) -> int:
    """Accept epoch milliseconds, an ISO-8601 string or a datetime; naive times are taken as UTC."""
    if isinstance(value, bool):
        raise ValueError("expected a timestamp, got a boolean")
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"out of range for a timestamp in epoch milliseconds: {_short(value)}")
        return value
    if isinstance(value, float) and value.is_integer():
        return to_millis(int(value))
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp or epoch milliseconds: {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
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
            rec, sub = _coerce_record(t, value, path + ".")
            errors.extend(sub)
            return rec
        if kind == "enum":
            if value not in t["symbols"]:
                errors.append(FieldError(path, f"must be one of {', '.join(t['symbols'])}; got {value!r}"))
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
        errors.append(FieldError(path, f"expected {t}, got {type(value).__name__} {value!r}"[:200]))
        return value
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON "\ud800": a lone surrogate Avro (UTF-8) cannot hold
            errors.append(
                FieldError(path, f"not valid Unicode: lone surrogate {value[exc.start]!r} at {exc.start}")
            )
            return value
    if t == "int" and isinstance(value, int) and not _INT32[0] <= value <= _INT32[1]:
        errors.append(FieldError(path, f"out of range for int: {_short(value)}"))
    elif t == "long" and isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
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


def _short(value: object) -> str:
    """A number for an error message: a 300-digit one is cut, so the message stays readable."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}…({len(text)} digits)"


def _coerce_record(
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
    for extra in sorted(set(data) - known):
        errors.append(FieldError(prefix + extra, f"unknown field (not in schema {schema['name']})"))
    return out, errors


BEHAVIOURAL = ("web_visit", "email_click", "download", "content_view")


#: Longest lead_id / anonymous_id / event_id accepted. Ids key partitions, state and ClickHouse rows and go
#: into webhook headers; a 60 KB one was accepted and keyed (webhook audit).
MAX_ID_CHARS = 256
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


def _domain_checks(name: str, record: Mapping[str, Any]) -> Iterable[FieldError]:
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
    if name == "content_view":
        dwell = record.get("dwell_ms")
        if isinstance(dwell, int) and _INT64[0] <= dwell < 0:  # out of range is reported by the type check
            yield FieldError("dwell_ms", f"must be >= 0, got {dwell}")
        pct = record.get("percent_viewed")
        if isinstance(pct, float) and math.isfinite(pct) and not 0.0 <= pct <= 100.0:
            yield FieldError("percent_viewed", f"must be between 0 and 100, got {pct}")
