"""Public producer SDK: ``from leadpulse.producer import Producer``."""

from streams.producer import DeliveryError, Producer, ProduceReport, lead_key, produce_file

__all__ = ["DeliveryError", "ProduceReport", "Producer", "lead_key", "produce_file"]
