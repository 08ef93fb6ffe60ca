"""``leadpulse broker`` as a user runs it: its Tansu does not outlive it, and a busy port is said at once
(ops audit: after ``kill -9`` the broker kept running with its port and data and was silently reused; a
port held by another server gave 31 s of silence, then "is it running? start it with leadpulse broker")."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from streams.broker import free_port, port_open, speaks_kafka
from tests.processes import LEADPULSE, CliProcess, leadpulse_env, wait_until

pytestmark = pytest.mark.e2e


def said(done: subprocess.CompletedProcess[str]) -> str:
    """Everything the command printed, with the console's line wrapping undone."""
    return " ".join((done.stdout + done.stderr).split())


def test_the_broker_dies_with_a_killed_leadpulse_broker_and_a_second_one_says_the_port_is_taken(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = leadpulse_env(data_dir=tmp_path / "d")
    first = CliProcess(["broker", "--port", str(port)], env, tmp_path / "broker.log")
    try:
        wait_until(lambda: speaks_kafka(f"127.0.0.1:{port}"), 60, "the broker to answer", first)
        second = subprocess.run(
            [*LEADPULSE, "broker", "--port", str(port)], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1, second.stdout
        assert f"port 127.0.0.1:{port} is already in use: a Kafka broker runs there" in said(second)
        os.kill(first.proc.pid, signal.SIGKILL)  # leadpulse only: Tansu is in its own session
        first.proc.wait(10)
        deadline = time.monotonic() + 10
        while port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not port_open("127.0.0.1", port), "Tansu outlived the leadpulse broker process"
    finally:
        first.stop(timeout=5)


def test_a_port_held_by_another_server_is_refused_at_once(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = leadpulse_env(data_dir=tmp_path / "d")
        started = time.monotonic()
        done = subprocess.run(
            [*LEADPULSE, "broker", "--port", str(port)], env=env, capture_output=True, text=True, timeout=60
        )
        worker = subprocess.run(
            [*LEADPULSE, "worker"],
            env=leadpulse_env(data_dir=tmp_path / "w", broker_port=port, web_port=free_port()),
            capture_output=True,
            text=True,
            timeout=60,
        )
        topics = subprocess.run(
            [*LEADPULSE, "topics", "create"],
            env=leadpulse_env(data_dir=tmp_path / "t", broker_port=port),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stdout
    assert f"port 127.0.0.1:{port} is already in use; stop it" in said(done)
    assert worker.returncode == 1
    assert "does not answer as a Kafka broker" in said(worker)
    for other in (worker, topics):  # one line, as every command's errors (they printed a traceback)
        assert other.returncode == 1, said(other)
        assert other.stderr.startswith("leadpulse: error: ") and "Traceback" not in said(other), said(other)
        assert "does not answer as a Kafka broker" in said(other)
    assert time.monotonic() - started < 30
