"""The embedded broker must know the broker answering on its port is the one it started.

``free_port`` hands out a port another process may bind first; our Tansu then exits on the bind while the
other broker answers. Readiness used to be "something Kafka answers there", so the caller went on with
another process's broker (a fault test hung "its" broker by pid while another test's answered). Tests and
benchmarks start their own brokers with ``start_private_broker``, which tries another port then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from streams import broker as broker_module
from streams.broker import (
    CLUSTER_ID_PREFIX,
    BrokerError,
    EmbeddedBroker,
    free_port,
    start_private_broker,
    tansu_binary,
)
from streams.settings import load_settings

pytestmark = pytest.mark.integration


def test_each_embedded_broker_has_a_cluster_id_of_its_own(broker: EmbeddedBroker, tmp_path: Path) -> None:
    other = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", broker.port, tmp_path / "t.log")
    assert broker.cluster_id.startswith(CLUSTER_ID_PREFIX) and other.cluster_id != broker.cluster_id


def test_a_broker_that_took_the_port_first_is_not_taken_for_ours(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The race, replayed: ours is starting (a process still running stands for a Tansu about to exit on
    the lost bind) while the session's broker holds the port and answers."""
    late = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", broker.port, tmp_path / "t.log")
    late.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        with pytest.raises(BrokerError, match=rf"another broker \(cluster id '{broker.cluster_id}'\) took"):
            late.wait_ready(10)
    finally:
        late.stop()
    assert broker.process is not None and broker.process.poll() is None  # the other broker is left alone


def test_a_private_broker_whose_port_was_taken_starts_on_another(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``start_private_broker`` (the tests' and benchmarks' own brokers): the first port handed out is the
    session broker's, taken; the second is free."""
    ports = iter([broker.port, free_port()])
    monkeypatch.setattr(broker_module, "free_port", lambda host="127.0.0.1": next(ports))
    own = start_private_broker(tmp_path / "own.log")
    try:
        assert own.port != broker.port and own.process is not None and own.process.poll() is None
        assert describe_cluster_id(own.bootstrap) == own.cluster_id != broker.cluster_id
        assert f"broker on 127.0.0.1:{broker.port} did not start" in caplog.text
    finally:
        own.stop()


def test_a_private_broker_gives_up_after_its_attempts(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "free_port", lambda host="127.0.0.1": broker.port)
    with pytest.raises(BrokerError, match="already in use"):
        start_private_broker(tmp_path / "own.log", attempts=2)


def describe_cluster_id(bootstrap: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        return str(admin.describe_cluster()["cluster_id"])
    finally:
        admin.close()
