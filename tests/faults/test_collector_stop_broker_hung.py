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
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.faults.pausing_proxy import hung_broker, sigterm_stops_in_time
from tests.processes import CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.faults


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
    # otherwise the proxy never pauses (a client id no one has): the test pauses Tansu once /ready answers
    client = b"aiokafka-producer" if when == "producer-start" else b"nobody"
    with hung_broker(tmp_path, "hungcollector.", client, 1) as hung:
        port = free_port()
        env = leadpulse_env(
            kafka_bootstrap=hung.address,
            topic_prefix="hungcollector.",
            data_dir=tmp_path / "collector",
            write_keys='{"web": "k"}',
        )
        proc = CliProcess(["collector", "--port", str(port)], env, tmp_path / "collector.log")
        try:
            if when != "producer-start":
                wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "collector ready", proc)
                hung.pause()
            if when == "publishing":  # a request in flight at SIGTERM
                threading.Thread(target=_post_one_event, args=(port,), daemon=True).start()
            step = f"the collector's producer connection (seen: {hung.proxy.clients})"
            wait_until(hung.paused.is_set, 60, step, proc)
            sigterm_stops_in_time(proc, f"the collector ({when})")
        finally:
            proc.stop(timeout=5)
