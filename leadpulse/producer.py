"""Public producer SDK: ``from leadpulse.producer import Producer, load_settings``.

Everything a caller needs to publish and to handle each failure the docs name (docs/ingestion.md, "Python
SDK") is importable from here, so that callers never reach into ``streams`` or ``schemas``.
"""

from schemas.errors import FieldError, SchemaValidationError
from streams.producer import BrokerUnavailable, DeliveryError, Producer, ProduceReport, lead_key, produce_file
from streams.settings import Settings, load_settings

__all__ = [
    "BrokerUnavailable",
    "DeliveryError",
    "FieldError",
    "ProduceReport",
    "Producer",
    "SchemaValidationError",
    "Settings",
    "lead_key",
    "load_settings",
    "produce_file",
]
