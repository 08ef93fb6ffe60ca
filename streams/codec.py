"""Faust codecs for Avro Single Object Encoding: one codec per schema, ``avro:<schema>``.

One codec per schema because encoding needs the writer schema, while decoding finds it from the fingerprint.
Inputs are consumed raw and decoded by the worker instead, so a poison record becomes a dead letter with
its topic/partition/offset rather than a Faust deserialisation error.
"""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from schemas.registry import SchemaRegistry, default_registry


class AvroSoeCodec(codecs.Codec):
    def __init__(self, schema: str, registry: SchemaRegistry | None = None, **kwargs: Any) -> None:
        self.schema = schema
        self.registry = registry or default_registry()
        super().__init__(schema=schema, **kwargs)

    def _dumps(self, obj: Any) -> bytes:
        return self.registry.encode(self.schema, obj)

    def _loads(self, s: bytes) -> Any:
        return self.registry.decode(s, expect=self.schema)[1]


def codec_name(schema: str) -> str:
    return f"avro:{schema}"


def register_codecs(registry: SchemaRegistry | None = None) -> None:
    registry = registry or default_registry()
    for name in registry.names:
        codecs.register(codec_name(name), AvroSoeCodec(name, registry))
