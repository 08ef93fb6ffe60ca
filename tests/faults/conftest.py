"""Fixtures of the fault suite (the session's broker and ClickHouse fixtures come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.faults.services import Services


@pytest.fixture
def services(broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path) -> Iterator[Services]:
    running = Services(broker, broker_settings, tmp_path)
    yield running
    running.stop_all()
