"""Avro encodings of single values, and the checks that vouch for them: the compiled codec's primitives.

Why a module of its own: ``schemas.fast_encode`` builds per-schema validators and encoders from these (as
closures and as the names its generated code refers to), and ``zigzag`` is also what the sink uses to append
origin fields to an Avro body (``sinks.avro_ocf``). Every check and writer raises ``Slow`` for a value it
cannot vouch for exactly as the registry would treat it; the caller then asks the registry.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any


class Slow(Exception):
    """The fast path cannot vouch for this value: the registry's general path decides."""


_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
PACK_DOUBLE = struct.Struct("<d").pack
_PACK_FLOAT = struct.Struct("<f").pack


def zigzag(n: int) -> bytes:
    """Avro ``long``: zig-zag, then 7 bits per byte, least significant group first. Up to four bytes
    (|n| < 2**27: Kafka offsets, lengths) are spelled out: the sink encodes every record's offset, and the
    loop cost a quarter of the whole intake's per-record time."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x80:
        return bytes((z,))
    if z < 0x4000:
        return bytes(((z & 0x7F) | 0x80, z >> 7))
    if z < 0x200000:
        return bytes(((z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80, z >> 14))
    if z < 0x10000000:
        return bytes(((z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80, ((z >> 14) & 0x7F) | 0x80, z >> 21))
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


SMALL = 4096
SMALL_VARINTS = tuple(zigzag(n) for n in range(SMALL))  # string lengths, union and enum indexes


_LARGE_VARINTS: dict[int, bytes] = {}  # timestamps recur (a signal's event time is in every later score)
_LARGE_VARINTS_MAX = 65_536


def write_long(buf: bytearray, value: int) -> None:
    if 0 <= value < SMALL:
        buf += SMALL_VARINTS[value]
        return
    encoded = _LARGE_VARINTS.get(value)
    if encoded is None:
        if not LONG_MIN <= value <= LONG_MAX:
            raise Slow
        encoded = zigzag(value)
        if len(_LARGE_VARINTS) >= _LARGE_VARINTS_MAX:
            _LARGE_VARINTS.clear()
        _LARGE_VARINTS[value] = encoded
    buf += encoded


Check = Callable[[Any], Any]  # returns the coerced value or raises Slow
Write = Callable[[bytearray, Any], None]  # appends the Avro encoding or raises Slow


def utf8(value: str) -> bool:
    """Whether Avro (UTF-8) can hold ``value``: not with a lone surrogate (JSON ``"\\ud800"``), which the
    registry refuses naming the field. ASCII, the common case, is checked first at C speed."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_string(value: Any) -> Any:
    if type(value) is str and utf8(value):
        return value
    raise Slow


def check_long(value: Any) -> Any:
    if type(value) is int and LONG_MIN <= value <= LONG_MAX:  # bool is not int here, as in the registry
        return value
    raise Slow


def _check_int(value: Any) -> Any:
    if type(value) is int and _INT_MIN <= value <= _INT_MAX:
        return value
    raise Slow


def _check_double(value: Any) -> Any:
    kind = type(value)
    if kind is float and value - value == 0.0:  # finite: NaN and ±inf give NaN
        return value
    if kind is int and LONG_MIN <= value <= LONG_MAX:
        return float(value)
    raise Slow


def _check_boolean(value: Any) -> Any:
    if type(value) is bool:
        return value
    raise Slow


def _write_string(buf: bytearray, value: Any) -> None:
    if type(value) is not str:
        raise Slow
    data = value.encode()  # a lone surrogate raises UnicodeEncodeError: the registry reports it
    write_long(buf, len(data))
    buf += data


def write_long_value(buf: bytearray, value: Any) -> None:
    if type(value) is not int:
        raise Slow
    write_long(buf, value)


def _write_int(buf: bytearray, value: Any) -> None:
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise Slow
    write_long(buf, value)


def _write_double(buf: bytearray, value: Any) -> None:
    if type(value) is not float:
        raise Slow
    buf += PACK_DOUBLE(value)


def _write_float(buf: bytearray, value: Any) -> None:
    if type(value) is not float:
        raise Slow
    buf += _PACK_FLOAT(value)


def _write_boolean(buf: bytearray, value: Any) -> None:
    if type(value) is not bool:
        raise Slow
    buf += b"\x01" if value else b"\x00"


PRIMITIVES: dict[str, tuple[Check, Write]] = {
    "string": (_check_string, _write_string),
    "long": (check_long, write_long_value),
    "int": (_check_int, _write_int),
    "double": (_check_double, _write_double),
    "float": (_check_double, _write_float),
    "boolean": (_check_boolean, _write_boolean),
}
