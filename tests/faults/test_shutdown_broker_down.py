"""SIGTERM during a broker outage: every long-running process exits 0, promptly, without a traceback.

Why: an operator stops the fleet while Kafka is down (a maintenance window, a failed cluster). aiokafka's
``consumer.stop()`` then raised a stray ``CancelledError`` (aio-libs/aiokafka#647, see
``streams/kafka_close.py``): the worker and the sink died with a 40-line traceback, exit code 1 and
"Unclosed AIOKafkaConsumer", which looks like a crash to the orchestrator and to whoever reads the log.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, create_topics, free_port, tansu_binary
from streams.settings import load_settings
from tests.processes import http_ok, pipeline_processes, wait_until

pytestmark = pytest.mark.faults


def test_sigterm_while_the_broker_is_down_exits_cleanly(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", free_port(), tmp_path / "tansu.log")
    broker.start()
    prefix = "down."
    create_topics(broker.bootstrap, prefix)
    ports = {name: free_port() for name in ("worker", "sink", "collector", "notifier")}
    procs = pipeline_processes(tmp_path, broker.bootstrap, prefix, ports)
    try:
        for name, proc in procs.items():
            url = f"http://127.0.0.1:{ports[name]}/ready"
            wait_until(lambda url=url: http_ok(url), 90, f"{name} ready", proc)  # type: ignore[misc]
        broker.stop()
        time.sleep(4)  # long enough for every consumer to fail a fetch and sit in its retry backoff
        for name, proc in procs.items():
            assert proc.proc.poll() is None, f"{name} exited when the broker went away:\n{proc.output()}"
        for name, proc in procs.items():
            started = time.monotonic()
            code = proc.stop(timeout=30)
            took = time.monotonic() - started
            out = proc.output()
            assert code == 0, f"{name} exited with {code} after SIGTERM:\n{out[-4000:]}"
            assert took < 25, f"{name} took {took:.1f}s to stop"
            for bad in ("Traceback", "Unclosed", "CancelledError"):
                assert bad not in out, f"{name}: {bad!r} in its output:\n{out[-4000:]}"
    finally:
        for proc in procs.values():
            proc.stop(timeout=5)
        broker.stop()


@pytest.mark.parametrize("name", ["worker", "sink", "notifier"])
def test_sigterm_while_joining_the_group_after_the_broker_died_exits_promptly(
    name: str, tmp_path: Path
) -> None:
    """A subscribed consumer's start waits for its first assignment, for ever once the broker is gone: a
    process whose broker died while it joined its group (a Kafka restart during a rollout) ignored SIGTERM
    until SIGKILL; the worker was still running 10 min after it. Tansu answers a join after about half the
    6 s session timeout, so the broker is stopped just after the process says it is joining."""
    broker = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", free_port(), tmp_path / "tansu.log")
    broker.start()
    prefix = "join."
    create_topics(broker.bootstrap, prefix)
    port = free_port()
    proc = pipeline_processes(tmp_path, broker.bootstrap, prefix, {name: port})[name]
    try:
        wait_until(lambda: "joining consumer group" in proc.output(), 90, f"{name} joining", proc)
        broker.stop()
        assert not http_ok(f"http://127.0.0.1:{port}/ready"), "assigned before the broker stopped"
        time.sleep(1)
        started = time.monotonic()
        code = proc.stop(timeout=30)
        took = time.monotonic() - started
        out = proc.output()
        assert code == 0, f"{name} exited with {code} after SIGTERM:\n{out[-4000:]}"
        assert took < 15, f"{name} took {took:.1f}s to stop"
        assert "before its first partition assignment" in out, out[-4000:]
        for bad in ("Traceback", "Unclosed", "CancelledError"):
            assert bad not in out, f"{name}: {bad!r} in its output:\n{out[-4000:]}"
    finally:
        proc.stop(timeout=5)
        broker.stop()
