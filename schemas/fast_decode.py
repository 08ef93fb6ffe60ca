"""Avro decoding compiled per schema: ``SchemaRegistry.decode``'s records, about three times faster.

Why: fastavro's ``schemaless_reader`` costs ~15 us for a web visit and ~40 us for a ``lead_score`` with its
reasons, most of it per-call setup; the worker decodes every input and every lead score it folds into an
account. A decoder is generated per current schema (strings, longs, ints, doubles, enums, nullable unions of
those, arrays, nested records: what leadpulse's schemas use) and used only when the record's writer schema
*is* that current schema; anything else (an older writer version needing resolution, a type it does not
know) has no decoder and goes to fastavro.

Any doubt is fastavro's to settle: the decoder raises on everything fastavro might read differently (a
truncated body, a negative length, an out-of-range union or enum index, a varint over 64 bits, invalid
UTF-8, bytes left after the record), and the caller then asks the registry, which decodes or raises its
own error. ``tests/unit/test_fast_codec.py`` checks the decoded records equal fastavro's, also for corrupted
bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

Reader = Callable[[bytes, int], tuple[Any, int]]  # (data, position) -> (value, next position)

_UNPACK_DOUBLE = struct.Struct("<d").unpack_from


class Undecidable(Exception):
    """These bytes are for fastavro to judge."""


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Avro ``long``: zig-zag varint, at most 10 bytes / 64 bits (fastavro's limit)."""
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift > 63:
            raise Undecidable
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise Undecidable
    return (n >> 1) ^ -(n & 1), pos


def read_string(data: bytes, pos: int) -> tuple[str, int]:
    size, pos = read_long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise Undecidable
    return data[pos:end].decode(), end  # strict UTF-8, as fastavro's default


def read_double(data: bytes, pos: int) -> tuple[float, int]:
    return _UNPACK_DOUBLE(data, pos)[0], pos + 8


_PRIMITIVES: dict[str, Reader] = {
    "string": read_string,
    "long": read_long,
    "int": read_long,
    "double": read_double,
}


def _nullable(inner: Reader, null_index: int) -> Reader:
    value_index = 1 - null_index

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        index, pos = read_long(data, pos)
        if index == null_index:
            return None, pos
        if index != value_index:
            raise Undecidable
        return inner(data, pos)

    return read


def _enum(symbols: list[str]) -> Reader:
    def read(data: bytes, pos: int) -> tuple[str, int]:
        index, pos = read_long(data, pos)
        if not 0 <= index < len(symbols):
            raise Undecidable
        return symbols[index], pos

    return read


def _array(item: Reader) -> Reader:
    def read(data: bytes, pos: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        while True:
            count, pos = read_long(data, pos)
            if count == 0:
                return out, pos
            if count < 0:  # a block with its byte size first
                count = -count
                _size, pos = read_long(data, pos)
            for _ in range(count):
                value, pos = item(data, pos)
                out.append(value)

    return read


def _varint_lines(target: str, indent: str) -> list[str]:
    """Generated lines reading a long into ``target``: the one-byte case inline, the rest by read_long."""
    return [
        f"{indent}b = data[pos]",
        f"{indent}if b < 128:",
        f"{indent}    {target} = (b >> 1) ^ -(b & 1)",
        f"{indent}    pos += 1",
        f"{indent}else:",
        f"{indent}    {target}, pos = read_long(data, pos)",
    ]


def _primitive_lines(kind: str, target: str, indent: str) -> list[str]:
    if kind == "double":
        return [f"{indent}{target} = unpack_double(data, pos)[0]", f"{indent}pos += 8"]
    if kind in ("long", "int"):
        return _varint_lines(target, indent)
    return [  # string
        *_varint_lines("n", indent),
        f"{indent}end = pos + n",
        f"{indent}if n < 0 or end > size:",
        f"{indent}    raise Undecidable",
        f"{indent}{target} = data[pos:end].decode()",
        f"{indent}pos = end",
    ]


def _primitive_kind(t: Any) -> str | None:
    kind = t.get("type") if isinstance(t, dict) else t
    return kind if kind in ("string", "long", "int", "double") else None


def _record(schema: Mapping[str, Any]) -> Reader | None:
    """A generated straight-line reader (a closure per field costs more than fastavro's C)."""
    namespace: dict[str, Any] = {
        "read_long": read_long,
        "unpack_double": _UNPACK_DOUBLE,
        "Undecidable": Undecidable,
    }
    lines = ["def read(data, pos):", "    size = len(data)"]
    names = []
    for i, spec in enumerate(schema["fields"]):
        t, target = spec["type"], f"x{i}"
        names.append(f"{spec['name']!r}: {target}")
        kind = _primitive_kind(t)
        if kind is not None:
            lines += _primitive_lines(kind, target, "    ")
            continue
        if isinstance(t, list) and len(t) == 2 and "null" in t:
            null_index = t.index("null")
            inner = _primitive_kind(t[1 - null_index])
            if inner is not None:
                lines += [
                    "    b = data[pos]",
                    "    pos += 1",
                    f"    if b == {2 * null_index}:",
                    f"        {target} = None",
                    f"    elif b == {2 * (1 - null_index)}:",
                    *_primitive_lines(inner, target, "        "),
                    "    else:",
                    "        raise Undecidable",
                ]
                continue
        reader = compile_reader(t)
        if reader is None:
            return None
        namespace[f"read{i}"] = reader
        lines.append(f"    {target}, pos = read{i}(data, pos)")
    lines.append(f"    return {{{', '.join(names)}}}, pos")
    exec(compile("\n".join(lines), f"<leadpulse decoder {schema.get('name')}>", "exec"), namespace)
    generated: Reader = namespace["read"]
    return generated


def compile_reader(t: Any) -> Reader | None:
    """A reader for schema type ``t`` (logical types read as their underlying type, as the registry
    does), or None when this module does not handle it."""
    if isinstance(t, str):
        return _PRIMITIVES.get(t)
    if isinstance(t, list):
        if len(t) != 2 or "null" not in t:
            return None
        inner = compile_reader(t[1 - t.index("null")])
        return _nullable(inner, t.index("null")) if inner is not None else None
    if isinstance(t, dict):
        kind = t.get("type")
        if kind == "record":
            return _record(t)
        if kind == "array":
            item = compile_reader(t["items"])
            return _array(item) if item is not None else None
        if kind == "enum":
            return _enum(list(t["symbols"]))
        if isinstance(kind, str) and kind not in ("map", "fixed", "error"):
            return compile_reader(kind)
    return None


def decode_body(reader: Reader, data: bytes, start: int, *, whole: bool = True) -> dict[str, Any]:
    """The record in ``data[start:]``; raises ``Undecidable`` when fastavro must judge the bytes.

    ``whole``: the record must end where ``data`` ends. Bytes after it mean the writer used another schema
    than its fingerprint names; the registry's decode then refuses them (``TrailingBytes``) with its own
    message. Only a reader of a schema's first fields (``EventCodec.decode_head``) passes False."""
    try:
        record, end = reader(data, start)
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise Undecidable from exc
    if not isinstance(record, dict) or (whole and end != len(data)):
        raise Undecidable
    return record
