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
import urllib.error
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


#: The grace the test gives the request in flight (LEADPULSE_COLLECTOR_STOP_GRACE_S), against a publish
#: timeout far past any orchestrator's grace period.
GRACE_S = 3


def _post_and_keep_the_answer(port: int, answers: list[object]) -> None:
    """One event, waiting on the hung broker; appends ``(status, headers, body)``, or the error when the
    connection closed without an answer (what a client cannot tell from a lost request)."""
    body = [{"type": "web_visit", "event_id": str(uuid.uuid4()), "event_time": int(time.time() * 1000)}]
    body[0].update({"anonymous_id": "a-1", "url": "https://example.com/pricing"})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=150) as response:
            answers.append((response.status, dict(response.headers), response.read()))
    except urllib.error.HTTPError as exc:
        answers.append((exc.code, dict(exc.headers), exc.read()))
    except OSError as exc:
        answers.append(exc)


def test_sigterm_with_a_long_publish_timeout_answers_the_request_in_flight_503_within_the_grace(
    tmp_path: Path,
) -> None:
    """A publish timeout of 120 s (allowed up to 300) used to hold the stop for the request in flight: aiohttp
    waited 60 s for it, then dropped its connection, past every orchestrator's grace period (SIGKILL)."""
    with hung_broker(tmp_path, "hunggrace.", b"nobody", 1) as hung:
        port = free_port()
        env = leadpulse_env(
            kafka_bootstrap=hung.address,
            topic_prefix="hunggrace.",
            data_dir=tmp_path / "collector",
            write_keys='{"web": "k"}',
            collector_publish_timeout_s=120,
            collector_stop_grace_s=GRACE_S,
        )
        proc = CliProcess(["collector", "--port", str(port)], env, tmp_path / "collector.log")
        answers: list[object] = []
        try:
            wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "collector ready", proc)
            hung.pause()
            client = threading.Thread(target=_post_and_keep_the_answer, args=(port, answers), daemon=True)
            client.start()
            started = time.monotonic()
            out = sigterm_stops_in_time(proc, "a publish in flight, publish timeout 120 s")
            took = time.monotonic() - started - 2  # sigterm_stops_in_time waits 2 s before its SIGTERM
            client.join(10)
        finally:
            proc.stop(timeout=5)
    # the grace, the producer's flush given up after 1 s, its sender's close given up after 3 s (a produce
    # request waits on the hung broker)
    assert took < GRACE_S + 6, f"stopped {took:.1f} s after SIGTERM, grace {GRACE_S} s:\n{out[-3000:]}"
    assert len(answers) == 1 and isinstance(answers[0], tuple), f"no answer, the request is lost: {answers}"
    status, headers, raw = answers[0]
    assert status == 503, answers  # what CollectorClient (and every HTTP client told to) retries
    assert headers.get("Retry-After"), headers
    assert json.loads(raw)["error"] == "shutting_down", raw
    assert "collector stopping" in out, out[-3000:]
