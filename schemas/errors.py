"""The errors of decoding, encoding and validating leadpulse records, each with a message fit for a user or a
dead letter (the worker and the sink put ``str(error)`` and the class name into the ``dlq`` record).

Why a module of its own: the registry raises them, and so do the JSON coercion (``schemas.coercion``) and the
domain rules (``schemas.domain_rules``) the registry calls; ``schemas.registry`` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass


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
