"""``run_collector`` (``leadpulse collector``) names a busy port, and only a busy port, as the port's
problem."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from streams.collector_process import run_collector
from streams.settings import load_settings
from streams.web import PortInUse

pytestmark = pytest.mark.unit


def test_a_kafka_producer_that_cannot_start_is_not_reported_as_a_busy_port(tmp_path: Path) -> None:
    """run_app starts the producer (an on_startup hook) inside the same call that binds the port, and every
    OSError with an errno out of it was reported as 'collector cannot listen on …
    (LEADPULSE_COLLECTOR_PORT)': a missing LEADPULSE_KAFKA_SSL_CAFILE (FileNotFoundError) sent the operator
    to the port."""
    settings = load_settings(
        write_keys={"web": "wk-start-test"},
        kafka_bootstrap="127.0.0.1:1",
        kafka_ssl_cafile=tmp_path / "missing-ca.pem",
    )
    with socket.socket() as probe:  # a free port: the bind is not what fails
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError) as info:
        run_collector(settings, "127.0.0.1", port)
    message = str(info.value)
    assert not isinstance(info.value, PortInUse), message
    assert "LEADPULSE_COLLECTOR_PORT" not in message and "cannot listen" not in message
    assert "Kafka producer" in message and "No such file or directory" in message


def test_a_busy_port_is_still_named_with_its_setting() -> None:
    settings = load_settings(write_keys={"web": "wk-start-test"}, kafka_bootstrap="127.0.0.1:1")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        class Idle:
            async def start(self) -> None:
                return None

            async def publish(self, messages: object) -> None:
                return None

            async def stop(self) -> None:
                return None

        with pytest.raises(PortInUse, match=rf"127\.0\.0\.1:{port} \(LEADPULSE_COLLECTOR_PORT\)"):
            run_collector(settings, "127.0.0.1", port, publisher=Idle())
