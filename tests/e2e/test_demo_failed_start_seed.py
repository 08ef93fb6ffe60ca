"""A demo that fails before it publishes anything does not use up its traffic seed.

The demo recorded its seed in the data directory before it started the broker, so a first run that failed
to start (here: LEADPULSE_BROKER_PORT held by something that is not Kafka) left "seed 7 is stored here"
behind. The next run in that directory then said "holds earlier demo traffic (seeds 7): adding seed 8", and
``--seed 7`` was refused as already stored, although nothing of it had been published.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def not_kafka() -> Iterator[int]:
    """A port that accepts connections and answers nothing Kafka understands."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def test_a_demo_that_could_not_start_leaves_its_seed_unused(not_kafka: int, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = leadpulse_env(broker_port=not_kafka, data_dir=data)
    runs = [
        subprocess.run(
            [*LEADPULSE, "demo", "--no-live", "--leads", "10"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for _ in range(2)
    ]
    for done in runs:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "does not answer as a Kafka broker" in done.stderr, done.stderr
    assert "holds earlier demo traffic" not in runs[1].stdout, runs[1].stdout
    seeds = data / "demo-seeds.json"
    assert not seeds.exists() or 7 not in json.loads(seeds.read_text())
