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
"""

from __future__ import annotations

import copy
import struct
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.fast_decode import Reader, Undecidable, compile_reader, decode_body
from schemas.registry import HEADER_LEN, SchemaError, SchemaRegistry, _domain_checks


class _Slow(Exception):
    """The fast path cannot vouch for this value: the registry's general path decides."""


_MISSING: Any = object()
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_PACK_DOUBLE = struct.Struct("<d").pack
_PACK_FLOAT = struct.Struct("<f").pack


def zigzag(n: int) -> bytes:
    """Avro ``long``: zig-zag, then 7 bits per byte, least significant group first."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = 4096
_SMALL_VARINTS = tuple(zigzag(n) for n in range(_SMALL))  # string lengths, union and enum indexes


_LARGE_VARINTS: dict[int, bytes] = {}  # timestamps recur (a signal's event time is in every later score)
_LARGE_VARINTS_MAX = 65_536


def _write_long(buf: bytearray, value: int) -> None:
    if 0 <= value < _SMALL:
        buf += _SMALL_VARINTS[value]
        return
    encoded = _LARGE_VARINTS.get(value)
    if encoded is None:
        if not _LONG_MIN <= value <= _LONG_MAX:
            raise _Slow
        encoded = zigzag(value)
        if len(_LARGE_VARINTS) >= _LARGE_VARINTS_MAX:
            _LARGE_VARINTS.clear()
        _LARGE_VARINTS[value] = encoded
    buf += encoded


Check = Callable[[Any], Any]  # returns the coerced value or raises _Slow
Write = Callable[[bytearray, Any], None]  # appends the Avro encoding or raises _Slow


def _utf8(value: str) -> bool:
    """Whether Avro (UTF-8) can hold ``value``: not with a lone surrogate (JSON ``"\ud800"``), which the
    registry refuses naming the field. ASCII, the common case, is checked first at C speed."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_string(value: Any) -> Any:
    if type(value) is str and _utf8(value):
        return value
    raise _Slow


def _check_long(value: Any) -> Any:
    if type(value) is int and _LONG_MIN <= value <= _LONG_MAX:  # bool is not int here, as in the registry
        return value
    raise _Slow


def _check_int(value: Any) -> Any:
    if type(value) is int and _INT_MIN <= value <= _INT_MAX:
        return value
    raise _Slow


def _check_double(value: Any) -> Any:
    kind = type(value)
    if kind is float and value - value == 0.0:  # finite: NaN and ±inf give NaN
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
        if kind == "record":
            return _record(t)
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


def _record(t: Mapping[str, Any]) -> tuple[Check, Write] | None:
    """A nested record (``lead_score.reasons``' Signal): a generated writer, field by field. Validation of
    nested records is left to the registry (no input schema has one)."""
    namespace = _namespace()
    lines = ["def write(buf, r):", "    if type(r) is not dict:", "        raise Slow"]
    for i, spec in enumerate(t["fields"]):
        compiled = _compile_type(spec["type"])
        if compiled is None:
            return None
        lines.append(f"    v = r[{spec['name']!r}]")  # missing: KeyError -> Slow (see _guarded)
        inline = _inline(spec["type"])
        if inline is None:
            namespace[f"write{i}"] = compiled[1]
            lines.append(f"    write{i}(buf, v)")
        else:
            lines += _inline_encode(*inline)
    lines = _guarded(lines)
    exec(compile("\n".join(lines), f"<leadpulse codec {t.get('name', 'record')}>", "exec"), namespace)

    def check(value: Any) -> Any:
        raise _Slow

    return check, namespace["write"]


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
#: What ``coerce`` vouches for; anything else (a long beyond 64 bits, NaN, ±inf) is the registry's to refuse.
_COERCE_CHECK = {
    "string": "type(v) is str and (v.isascii() or utf8(v))",
    "long": "type(v) is int and LONG_MIN <= v <= LONG_MAX",
    "double": "type(v) is float and v - v == 0.0",
}


def _namespace() -> dict[str, Any]:
    """What generated code refers to."""
    return {
        "M": _MISSING,
        "Slow": _Slow,
        "SMALL": _SMALL_VARINTS,
        "S": _SMALL,
        "write_long": _write_long,
        "varint": zigzag,
        "LONG_MIN": _LONG_MIN,
        "LONG_MAX": _LONG_MAX,
        "pack_double": _PACK_DOUBLE,
        "utf8": _utf8,
    }


def _inline_encode(kind: str, null_index: int | None, value_index: int | None) -> list[str]:
    """Generated lines appending the Avro encoding of ``v`` (a primitive, maybe nullable) to ``buf``."""
    lines: list[str] = []
    if null_index is None:
        indent = "    "
    else:
        lines += [
            "    if v is None:",
            f"        buf += {_SMALL_VARINTS[null_index]!r}",
            "    else:",
            f"        buf += {_SMALL_VARINTS[value_index or 0]!r}",
        ]
        indent = "        "
    lines += [f"{indent}if not {_INLINE_CHECK[kind]}:", f"{indent}    raise Slow"]
    if kind == "string":
        lines += [
            f"{indent}b = v.encode()",
            f"{indent}size = len(b)",
            f"{indent}buf += SMALL[size] if size < S else varint(size)",
            f"{indent}buf += b",
        ]
    elif kind == "long":
        lines.append(f"{indent}write_long(buf, v)")
    else:
        lines.append(f"{indent}buf += pack_double(v)")
    return lines


def _guarded(lines: list[str]) -> list[str]:
    """A generated writer's body inside ``try``: a missing field (``r[name]`` raises KeyError; fastavro would
    fill a default) goes the registry's way. Subscripting instead of ``r.get(name, M)`` saved ~15% of a
    ``lead_score`` encode (one method call per field, ~50 per record with its reasons)."""
    head, body = lines[0], lines[1:]
    indented = ["    " + line for line in body]
    return [head, "    try:", *indented, "    except KeyError:", "        raise Slow from None"]


def _generate(name: str, fields: list[_Field]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Straight-line ``coerce(data)`` and ``encode(record)`` for one schema (one call per event instead of
    a few per field: the generated code is what the loops over ``fields`` would do, unrolled)."""
    namespace = {**_namespace(), "domain_checks": _domain_checks, "deepcopy": copy.deepcopy, "NAME": name}
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
        encode.append(f"    v = r[{f.name!r}]")
        if f.inline is None:
            coerce.append(f"        x{i} = check{i}(v)")
            encode.append(f"    write{i}(buf, v)")
            continue
        kind, null_index, value_index = f.inline
        test = _COERCE_CHECK[kind]
        guard = "" if null_index is None else "v is not None and "
        if kind == "double":  # the registry takes ints for doubles and makes them floats
            coerce += ["        if type(v) is int and LONG_MIN <= v <= LONG_MAX:", "            v = float(v)"]
            coerce += [f"        elif {guard}not ({test}):", "            raise Slow"]
        else:
            coerce += [f"        if {guard}not ({test}):", "            raise Slow"]
        coerce.append(f"        x{i} = v")
        encode += _inline_encode(kind, null_index, value_index)
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
    encode = _guarded(encode)
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
    """``validate``, ``encode`` and ``decode`` with ``SchemaRegistry``'s results, faster for the usual event.

    Each call tries the compiled fast path and falls back to the registry whenever the fast path cannot
    vouch for the answer, so every error (and its wording) still comes from the registry.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self._compiled: dict[str, _CompiledSchema] = {}
        self._readers: dict[int, tuple[str, Reader]] = {}  # current versions' fingerprints
        self._heads: dict[tuple[str, str], tuple[int, Reader | None]] = {}  # see decode_head
        for name, version in registry.current.items():
            compiled = _compile_schema(name, version.raw, version.header)
            if compiled is not None:
                self._compiled[name] = compiled
            reader = compile_reader(version.raw)
            if reader is not None:
                self._readers[version.fingerprint] = (name, reader)

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
            except _Slow:
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
            except (_Slow, ValueError, OverflowError, struct.error):  # UnicodeEncodeError is a ValueError
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
