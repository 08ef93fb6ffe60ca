"""Avro validation and encoding compiled per schema: the registry's answers, several times faster.

Why: profiling the collector showed ``SchemaRegistry.validate`` (a generic walk of the schema per event) and
``SchemaRegistry.encode`` (fastavro's union matching costs ~1 us per nullable field, ~45 us for a
``lead_score`` with its reasons) as the largest costs per event; the worker spent a quarter of its time in
fastavro encoding its outputs. ``EventCodec`` compiles each schema once into per-field checks and encoders
(nested records and arrays of them included). It is a *fast path only*: it vouches for the common, valid
shape of a record (Python types exactly as the schema wants them) and hands anything else — every invalid
event, ISO timestamps, out-of-range numbers, unknown schema constructs — to the registry, so error messages,
coercions and rejections stay the registry's own. ``tests/unit/test_fast_codec.py`` checks with generated
records that both paths accept the same input, build equal records and encode byte-identical messages.

This module is the facade; the generated validators and encoders are in ``schemas.fast_encode`` (on the
primitives of ``schemas.encode_primitives``), the generated decoders in ``schemas.fast_decode``.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Mapping
from typing import Any

from schemas.encode_primitives import Slow
from schemas.errors import SchemaError
from schemas.fast_decode import Reader, Undecidable, compile_reader, decode_body
from schemas.fast_encode import CompiledSchema, compile_schema
from schemas.registry import HEADER_LEN, SchemaRegistry


class EventCodec:
    """``validate``, ``encode`` and ``decode`` with ``SchemaRegistry``'s results, faster for the usual event.

    Each call tries the compiled fast path and falls back to the registry whenever the fast path cannot
    vouch for the answer, so every error (and its wording) still comes from the registry.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self._compiled: dict[str, CompiledSchema] = {}
        self._readers: dict[int, tuple[str, Reader]] = {}  # current versions' fingerprints
        self._heads: dict[tuple[str, str], tuple[int, Reader | None]] = {}  # see decode_head
        self._current: dict[str, tuple[bytes, Reader]] = {}  # see decode_current
        for name, version in registry.current.items():
            compiled = compile_schema(name, version.raw, version.header)
            if compiled is not None:
                self._compiled[name] = compiled
            reader = compile_reader(version.raw)
            if reader is not None:
                self._readers[version.fingerprint] = (name, reader)
                self._current[name] = (version.header, reader)

    def decode_head(self, data: bytes, name: str, last_field: str) -> tuple[str, dict[str, Any]]:
        """The fields of a ``name`` record up to ``last_field``, not reading the rest (the worker's account
        hop needs five fields of a ``lead_score`` and not its reasons). A record of another writer schema,
        or bytes the fast path cannot vouch for, decode whole, as ``decode`` does. Bytes after ``last_field``
        are not read, so a corrupt tail goes unnoticed, and so do trailing bytes after the record (which
        ``decode`` refuses as ``TrailingBytes``): only for records this process's own kind wrote."""
        head = self._heads.get((name, last_field))
        if head is None:
            head = self._heads[(name, last_field)] = self._compile_head(name, last_field)
        fingerprint, reader = head
        if reader is not None and self._writer(data) == fingerprint:
            # whole=False: the head ends before the body does, so trailing bytes cannot be seen here
            record = _compiled_body(reader, data, whole=False)
            if record is not None:
                return name, record
        return self.decode(data, expect=name)

    def decode_current(self, data: bytes, name: str) -> dict[str, Any] | None:
        """The ``name`` record in ``data`` when its writer is ``name``'s current schema and the compiled
        reader vouches for every byte (the whole body, nothing after it); else None, and the caller asks
        ``decode``. The sink's per-record path: one header comparison instead of parsing the fingerprint."""
        found = self._current.get(name)
        if found is None or not data.startswith(found[0]):
            return None
        return _compiled_body(found[1], data)

    def _compile_head(self, name: str, last_field: str) -> tuple[int, Reader | None]:
        version = self.registry.current[name]
        fields = version.raw["fields"]
        names = [f["name"] for f in fields]
        if last_field not in names:
            raise ValueError(f"{name} has no field {last_field!r}")
        head = {**version.raw, "fields": fields[: names.index(last_field) + 1]}
        return version.fingerprint, compile_reader(head)

    def compiled_decoder(self, name: str) -> bool:
        """Whether records written with ``name``'s current schema decode without fastavro."""
        return any(found == name for found, _reader in self._readers.values())

    def decode(self, data: bytes, expect: str | None = None) -> tuple[str, dict[str, Any]]:
        """``SchemaRegistry.decode``'s answer; compiled when the writer schema is the current one
        (``schemas/fast_decode.py``), else, and for any bytes it cannot vouch for, the registry's."""
        fingerprint = self._writer(data)
        found = self._readers.get(fingerprint) if fingerprint is not None else None
        if found is not None and (expect is None or found[0] == expect):
            record = _compiled_body(found[1], data)
            if record is not None:
                return found[0], record
        return self.registry.decode(data, expect)

    def _writer(self, data: bytes) -> int | None:
        """The writer schema's fingerprint, or None (the registry's own decode then says what is wrong)."""
        try:
            return self.registry.writer_of(data).fingerprint
        except SchemaError:
            return None

    def compiled(self, name: str) -> bool:
        """Whether ``name`` has a fast path (a schema without one is always handled by the registry)."""
        return name in self._compiled

    def validate(self, name: str, data: Mapping[str, Any]) -> dict[str, Any]:
        compiled = self._compiled.get(name)
        if compiled is not None:
            try:
                return compiled.coerce(data)
            except Slow:
                pass
        return self.registry.validate(name, data)

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        fast = self.fast_encode(name, record)
        return fast if fast is not None else self.registry.encode(name, record)

    def fast_encode(self, name: str, record: Mapping[str, Any]) -> bytes | None:
        """The compiled path's bytes, or None when it cannot vouch for this record."""
        compiled = self._compiled.get(name)
        if compiled is not None:
            try:
                return compiled.encode(record)
            except (Slow, ValueError, OverflowError, struct.error):  # UnicodeEncodeError is a ValueError
                pass
        return None


_CODECS: weakref.WeakKeyDictionary[SchemaRegistry, EventCodec] = weakref.WeakKeyDictionary()


def _compiled_body(reader: Reader, data: bytes, *, whole: bool = True) -> dict[str, Any] | None:
    """The record after the header by a compiled reader, or None when fastavro must judge the bytes
    (``whole``: also when bytes follow the record; see ``decode_body``)."""
    try:
        return decode_body(reader, data, HEADER_LEN, whole=whole)
    except Undecidable:
        return None


def codec_for(registry: SchemaRegistry) -> EventCodec:
    """The registry's codec, compiled once."""
    codec = _CODECS.get(registry)
    if codec is None:
        codec = _CODECS[registry] = EventCodec(registry)
    return codec
