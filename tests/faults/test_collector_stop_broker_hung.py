"""SIGTERM while the broker hangs (accepts connections, never answers): ``leadpulse collector`` exits 0
within the 25 s the other processes are given (tests/faults/test_shutdown_broker_hung.py), whether the broker
hung during the producer's start (the collector waits for it: ``collector_process``, up to
``LEADPULSE_COLLECTOR_BROKER_WAIT_S``), once it was serving, or with a request's publish in flight.

Measured for stop 28 after the worker's and the notifier's starts were found to ignore SIGTERM with the
broker hung: the collector's wait was already given up at a stop (``finished_before_stop``), and its
producer's close with nothing in flight does not wait on the broker; covered so that they stay so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, create_topics, free_port, tansu_binary
from streams.settings import load_settings
from tests.faults.pausing_proxy import PausingProxy
from tests.processes import CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.faults

STOP_WITHIN_S = 25.0


def _post_one_event(port: int) -> None:
    """One event, waiting on the hung broker (a 503 after the publish timeout, or the connection closed)."""
    body = [{"type": "web_visit", "event_id": str(uuid.uuid4()), "event_time": int(time.time() * 1000)}]
    body[0].update({"anonymous_id": "a-1", "url": "https://example.com/pricing"})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
    )
    with contextlib.suppress(OSError):
        urllib.request.urlopen(request, timeout=60).close()


@pytest.mark.parametrize("when", ["producer-start", "serving", "publishing"])
def test_sigterm_while_the_broker_hangs_stops_the_collector_in_time(tmp_path: Path, when: str) -> None:
    broker = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", free_port(), tmp_path / "tansu.log")
    broker.start()
    assert broker.process is not None
    tansu_pid = broker.process.pid
    prefix = "hungcollector."
    create_topics(broker.bootstrap, prefix)
    paused = threading.Event()

    def pause() -> None:
        os.kill(tansu_pid, signal.SIGSTOP)
        paused.set()

    # otherwise the proxy never pauses (a client id no one has): the test pauses Tansu once /ready answers
    client = b"aiokafka-producer" if when == "producer-start" else b"nobody"
    proxy = PausingProxy((broker.host, broker.port), pause, client, 1).start()
    port = free_port()
    env = leadpulse_env(
        kafka_bootstrap=proxy.address,
        topic_prefix=prefix,
        data_dir=tmp_path / "collector",
        write_keys='{"web": "k"}',
    )
    proc = CliProcess(["collector", "--port", str(port)], env, tmp_path / "collector.log")
    try:
        if when != "producer-start":
            wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "collector ready", proc)
            pause()
        if when == "publishing":  # a request in flight at SIGTERM
            threading.Thread(target=_post_one_event, args=(port,), daemon=True).start()
        wait_until(paused.is_set, 60, f"the collector's producer connection (seen: {proxy.clients})", proc)
        time.sleep(2)  # the start (or the producer's background work) is under way, waiting for an answer
        assert proc.proc.poll() is None, f"the collector exited, broker hung:\n{proc.output()[-3000:]}"
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.proc.wait(90)
        took = time.monotonic() - started
        out = proc.output()
        print(f"\ncollector stop time with the broker hung ({when}): {took:.1f} s")
        assert proc.proc.returncode is not None, f"still running 90 s after SIGTERM:\n{out[-3000:]}"
        assert proc.proc.returncode == 0, f"exited with {proc.proc.returncode}:\n{out[-3000:]}"
        assert took < STOP_WITHIN_S, f"took {took:.1f}s to stop:\n{out[-3000:]}"
        for bad in ("Traceback", "Unclosed", "CancelledError"):
            assert bad not in out, f"{bad!r} in its output:\n{out[-4000:]}"
    finally:
        if paused.is_set():
            os.kill(tansu_pid, signal.SIGCONT)
        proc.stop(timeout=5)
        proxy.stop()
        broker.stop()
