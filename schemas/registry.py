"""Avro schemas of every leadpulse record and their Single Object Encoding.

Why a registry of our own instead of a schema-registry service: the wire format (DESIGN §6) is Avro Single
Object Encoding, where every message carries the CRC-64-AVRO fingerprint of its writer schema. A reader only
needs every schema version that was ever written, and those live in ``schemas/`` (current) and
``schemas/history/`` (older versions), so decoding needs no network round trip and no extra service.

The registry's validation is built from ``schemas.coercion`` (JSON input against a schema) and
``schemas.domain_rules`` (ids, identities, ranges); its errors are in ``schemas.errors``. Their public names
stay importable from here.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from schemas.coercion import coerce_record, to_millis, validation_errors
from schemas.domain_rules import (
    BEHAVIOURAL,
    IDENTITY_FIELDS,
    MAX_ID_CHARS,
    domain_checks,
    identity_problem,
    identity_problems,
)
from schemas.errors import (
    FieldError,
    SchemaError,
    SchemaValidationError,
    TrailingBytes,
    UnknownFingerprint,
    UnknownSchema,
    WireFormatError,
)

#: The registry's public names, as before the coercion, the domain rules and the errors moved to their own
#: modules (code outside this repository imports them from here).
__all__ = [
    "BEHAVIOURAL",
    "HEADER_LEN",
    "IDENTITY_FIELDS",
    "MAX_ID_CHARS",
    "SCHEMA_DIR",
    "SOE_MAGIC",
    "FieldError",
    "SchemaError",
    "SchemaRegistry",
    "SchemaValidationError",
    "SchemaVersion",
    "TrailingBytes",
    "UnknownFingerprint",
    "UnknownSchema",
    "WireFormatError",
    "crc64_avro",
    "default_registry",
    "identity_problem",
    "identity_problems",
    "schema_fingerprint",
    "to_millis",
    "validation_errors",
]

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
        record, errors = coerce_record(version.raw, data, "")
        errors.extend(domain_checks(name, record))
        if errors:
            raise SchemaValidationError(name, errors)
        return record


@lru_cache(maxsize=1)
def default_registry() -> SchemaRegistry:
    return SchemaRegistry()
