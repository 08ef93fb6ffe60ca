"""The worker creates missing topics at start with LEADPULSE_TOPIC_REPLICATION_FACTOR, as `topics create`
does: a worker started before the setup job (or without it) made one-replica topics on a production cluster
before stop 28, and the broker's default after it even when the setting said otherwise."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents import worker_clients
from streams.settings import load_settings

pytestmark = pytest.mark.unit


def test_the_worker_creates_topics_with_the_configured_replication_factor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(worker_clients, "is_tansu", lambda settings: False)
    monkeypatch.setattr(worker_clients, "create_topics", lambda *args: calls.append(args) or {})
    settings = load_settings(kafka_bootstrap="kafka-1:9092", topic_replication_factor=3)
    assert asyncio.run(worker_clients.check_broker(settings)) is False
    assert len(calls) == 1 and calls[0][0] == "kafka-1:9092" and calls[0][-1] == 3
