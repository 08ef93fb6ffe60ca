"""The naive benchmark's Faust app (``streams.app.create_app``) applies the Tansu end-offset correction with
the configured SASL/TLS settings: the correction opens its own consumer, which spoke plaintext before, so on
a secured broker taken for Tansu every table restore of the baseline would have failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import streams.tansu_compat
from streams.app import create_app
from streams.settings import load_settings

pytestmark = pytest.mark.unit


def test_the_end_offset_correction_gets_the_sasl_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(
        streams.tansu_compat,
        "patch_faust_end_offsets",
        lambda bootstrap, security=None: calls.append((bootstrap, security)),
    )
    settings = load_settings(data_dir=tmp_path).model_copy(
        update={
            "kafka_bootstrap": "kafka-1:9092",
            "tansu_workaround": True,  # decided by the setting: no broker is asked
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "PLAIN",
            "kafka_sasl_username": "leadpulse",
            "kafka_sasl_password": SecretStr("not-a-real-password"),
        }
    )
    create_app(settings, app_id="leadpulse-naive-test")
    assert len(calls) == 1
    bootstrap, security = calls[0]
    assert bootstrap == "kafka-1:9092"
    assert security is not None
    assert security["security_protocol"] == "SASL_SSL"
    assert security["sasl_mechanism"] == "PLAIN"
    assert security["sasl_plain_username"] == "leadpulse"
