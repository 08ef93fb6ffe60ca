"""Per-schema validators and encoders, generated once: what ``EventCodec`` runs for ``validate``/``encode``.

Why generated code: a closure per field costs more than it saves; ``_generate`` writes one straight-line
``coerce(data)`` and ``encode(record)`` per flat record schema (what loops over the fields would do,
unrolled), inlining strings, longs, timestamps and doubles, maybe nullable; other types (enums, arrays,
nested records) call the closures ``_compile_type`` builds from ``schemas.encode_primitives``. Anything
they cannot vouch for raises ``Slow`` and the registry decides (``schemas.fast_codec``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.domain_rules import domain_checks
from schemas.encode_primitives import (
    LONG_MAX,
    LONG_MIN,
    PACK_DOUBLE,
    PRIMITIVES,
    SMALL,
    SMALL_VARINTS,
    Check,
    Slow,
    Write,
    check_long,
    utf8,
    write_long,
    write_long_value,
    zigzag,
)

_MISSING: Any = object()


def _compile_type(t: Any) -> tuple[Check, Write] | None:
    """Check and writer for one schema type, or None when the fast path does not handle that type."""
    if isinstance(t, str):
        return PRIMITIVES.get(t)
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
            return (check_long, write_long_value) if t.get("type") == "long" else None
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
    null_tag, value_tag = SMALL_VARINTS[null_index], SMALL_VARINTS[value_index]

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
        raise Slow

    def write(buf: bytearray, value: Any) -> None:
        position = index.get(value) if type(value) is str else None
        if position is None:
            raise Slow
        write_long(buf, position)

    return check, write


def _array(items: tuple[Check, Write]) -> tuple[Check, Write]:
    check_item, write_item = items

    def check(value: Any) -> Any:
        if type(value) is list:
            return [check_item(v) for v in value]
        raise Slow

    def write(buf: bytearray, value: Any) -> None:
        if type(value) is not list:
            raise Slow
        if value:  # one block of len(value) items, then the empty block that ends the array
            write_long(buf, len(value))
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
        raise Slow

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
        "Slow": Slow,
        "SMALL": SMALL_VARINTS,
        "S": SMALL,
        "write_long": write_long,
        "varint": zigzag,
        "LONG_MIN": LONG_MIN,
        "LONG_MAX": LONG_MAX,
        "pack_double": PACK_DOUBLE,
        "utf8": utf8,
    }


def _inline_encode(kind: str, null_index: int | None, value_index: int | None) -> list[str]:
    """Generated lines appending the Avro encoding of ``v`` (a primitive, maybe nullable) to ``buf``."""
    lines: list[str] = []
    if null_index is None:
        indent = "    "
    else:
        lines += [
            "    if v is None:",
            f"        buf += {SMALL_VARINTS[null_index]!r}",
            "    else:",
            f"        buf += {SMALL_VARINTS[value_index or 0]!r}",
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
    namespace = {**_namespace(), "domain_checks": domain_checks, "deepcopy": copy.deepcopy, "NAME": name}
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


class CompiledSchema:
    """One flat record schema: a generated validator and encoder (see ``_generate``)."""

    def __init__(self, name: str, header: bytes, fields: list[_Field]) -> None:
        self.name = name
        self.header = header
        self.fields = fields
        self._coerce, self._encode = _generate(name, fields)

    def coerce(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The record ``SchemaRegistry.validate`` would return, or Slow when it might disagree."""
        result: dict[str, Any] = self._coerce(data)
        return result

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """The bytes ``SchemaRegistry.encode`` would return, or Slow when it might disagree."""
        result: bytes = self._encode(record, self.header)
        return result


def compile_schema(name: str, raw: Mapping[str, Any], header: bytes) -> CompiledSchema | None:
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
    return CompiledSchema(name, header, fields)
