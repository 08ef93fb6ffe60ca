"""The collector's request body: Content-Encoding undone by ``decompress``, the envelope read by
``parse_body``; every problem is a ``BodyError`` with the status and code the client gets."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from streams.intake import BodyError, Limits, decompress, parse_body

pytestmark = pytest.mark.unit

BODY = json.dumps({"batch": [{"type": "web_visit", "event_id": "e"}]}).encode()


@pytest.mark.parametrize(
    ("encoding", "encoded"),
    [
        (None, BODY),
        ("identity", BODY),
        ("gzip", gzip.compress(BODY, mtime=0)),
        ("x-gzip", gzip.compress(BODY, mtime=0)),
        ("GZIP", gzip.compress(BODY, mtime=0)),
        ("deflate", zlib.compress(BODY)),  # zlib-wrapped, as the RFC says
        ("deflate", zlib.compress(BODY)[2:-4]),  # raw deflate, as some clients send it
    ],
)
def test_supported_encodings_decode_to_the_body(encoding: str | None, encoded: bytes) -> None:
    assert decompress(encoded, encoding, limit=10_000) == BODY


@pytest.mark.parametrize(
    ("encoding", "encoded", "status", "code"),
    [
        ("gzip", b"notgzip", 400, "undecodable_body"),
        ("gzip", gzip.compress(BODY, mtime=0)[:-12], 400, "undecodable_body"),  # truncated
        ("deflate", b"\x78garbage", 400, "undecodable_body"),
        ("zstd", BODY, 415, "unsupported_encoding"),
        ("br", BODY, 415, "unsupported_encoding"),
        (
            "gzip",
            gzip.compress(b" " * 10_000_000, mtime=0),
            413,
            "body_too_large",
        ),  # a bomb: 10 MB from ~10 KB
    ],
)
def test_bad_unsupported_and_oversized_bodies_are_body_errors(
    encoding: str, encoded: bytes, status: int, code: str
) -> None:
    with pytest.raises(BodyError) as info:
        decompress(encoded, encoding, limit=512 * 1024)
    assert (info.value.status, info.value.code) == (status, code)


def test_a_gzip_body_of_several_members_decodes_whole() -> None:
    """RFC 1952: a gzip stream is a series of members (what streaming compressors write per flushed chunk,
    and `cat a.gz b.gz`). Only the first member was decoded: the body was cut there, silently, and answered
    as "not JSON"."""
    members = gzip.compress(BODY[:20], mtime=0) + gzip.compress(BODY[20:], mtime=0)
    assert decompress(members, "gzip", limit=10_000) == BODY
    with pytest.raises(BodyError, match="more than the limit of 30 bytes"):  # the limit is for all members
        decompress(members, "gzip", limit=30)
    with pytest.raises(BodyError) as info:  # bytes after a member that are not one
        decompress(gzip.compress(BODY, mtime=0) + b"garbage", "gzip", limit=10_000)
    assert (info.value.status, info.value.code) == (400, "undecodable_body")


def test_a_body_exactly_at_the_limit_decodes_and_one_byte_more_does_not() -> None:
    assert decompress(gzip.compress(b"x" * 1000), "gzip", limit=1000) == b"x" * 1000
    with pytest.raises(BodyError, match="more than the limit of 999 bytes"):
        decompress(gzip.compress(b"x" * 1000), "gzip", limit=999)


def test_deeply_nested_json_is_a_400_not_a_recursion_error() -> None:
    with pytest.raises(BodyError, match="nested too deeply") as info:
        parse_body(b"[" * 100_000 + b"]" * 100_000, Limits())
    assert info.value.code == "invalid_json"


def test_a_number_of_more_digits_than_python_parses_is_a_400_not_a_500() -> None:
    """json.loads raises a plain ValueError (not a JSONDecodeError) for an integer of more than 4300 digits
    (Python's int_max_str_digits): it reached the collector's middleware as a 500 for the whole request."""
    body = b'{"type": "content_view", "dwell_ms": ' + b"9" * 5000 + b"}"
    with pytest.raises(BodyError, match="more than 4300 digits") as info:
        parse_body(body, Limits())
    assert (info.value.status, info.value.code) == (400, "invalid_json")
    assert "set_int_max_str_digits" not in str(info.value)  # a client cannot change the server's Python


def test_unknown_batch_fields_are_refused_by_name() -> None:
    body = json.dumps({"batch": [{"type": "web_visit"}], "sentAt": 1, "foo": 2}).encode()
    with pytest.raises(BodyError, match=r"unknown batch field\(s\) \['foo', 'sentAt'\]") as info:
        parse_body(body, Limits())
    assert (info.value.status, info.value.code) == (400, "invalid_batch")
    assert parse_body(
        json.dumps({"batch": [{}], "sent_at": 1, "write_key": "k"}).encode(), Limits()
    ).write_key
