"""Insert failures sorted where they arise: retryable (back off, re-send the identical batch) or permanent
(the rows themselves are bad: isolate them and dead-letter them).

Why by code and name: clickhouse-connect raises ``DatabaseError`` with the server's numeric ``code`` for
server-side failures, ``OperationalError`` for transport trouble, and plain ``TypeError``/``ValueError``
when a value cannot be serialised into its column on the client. The code, not the message, is the stable
contract. Anything unrecognised counts as retryable: stalling (visible in
``leadpulse_sink_last_success_timestamp_seconds``) is recoverable, dropping rows is not.
"""

from __future__ import annotations

import struct
from typing import Literal

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

Kind = Literal["retryable", "permanent"]

# Server error codes meaning "this data is invalid for this table": re-sending cannot help.
PERMANENT_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        469,  # VIOLATED_CONSTRAINT (a table CHECK, e.g. events.dwell_ms_not_negative)
    }
)
# STD_EXCEPTION: a C++ exception the server wraps; permanent only when it is the Avro input format's parser
# failing on a body (the sink's fast path ships Avro bodies undecoded: a truncated or mistyped record gives
# "type: avro::Exception, e.what() = EOF reached / Cannot have negative length", measured on chDB 26.9).
STD_EXCEPTION = 1001
AVRO_PARSE_ERROR = "avro::Exception"
# Client-side serialisation failures of a value into its column type.
PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    OverflowError,
    struct.error,
    UnicodeEncodeError,
)

# Documented here so operators can grep: these back off and retry (non-exhaustive; unknown = retryable).
RETRYABLE_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        16,  # NO_SUCH_COLUMN_IN_TABLE (a migration is missing: run `leadpulse migrate`, rows are kept)
        60,  # UNKNOWN_TABLE (same)
        81,  # UNKNOWN_DATABASE (same)
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
    }
)


def error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def classify(exc: BaseException) -> Kind:
    """``permanent`` when the batch's data is at fault, ``retryable`` otherwise (transport, load, schema)."""
    if isinstance(exc, OperationalError):
        return "retryable"
    if isinstance(exc, DatabaseError):
        code = error_code(exc)
        if code == STD_EXCEPTION and AVRO_PARSE_ERROR in str(exc):
            return "permanent"
        return "permanent" if code in PERMANENT_CODES else "retryable"
    if isinstance(exc, PERMANENT_TYPES):
        return "permanent"
    return "retryable"


def describe(exc: BaseException) -> str:
    code = error_code(exc)
    prefix = f"{type(exc).__name__}" + (f" (code {code})" if code is not None else "")
    return f"{prefix}: {str(exc).splitlines()[0][:500] if str(exc) else ''}"


class SinkBackpressure(Exception):
    """ClickHouse cannot take this batch now; the caller waits ``retry_after`` seconds and re-sends the
    identical batch (same rows, same dedup token). Raised by ``write``, never slept inside it."""

    def __init__(self, table: str, retry_after: float, cause: BaseException, what: str | None = None) -> None:
        self.table = table
        self.retry_after = retry_after
        self.cause = cause
        what = what or f"insert into leadpulse.{table}"
        super().__init__(f"{what} failed, retrying in {retry_after:.1f}s: {describe(cause)}")
