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
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from streams.broker import create_topics, free_port, start_private_broker
from streams.reader import Decoded, read_topic
from streams.settings import load_settings
from tests.faults.pausing_proxy import hung_broker, sigterm_stops_in_time
from tests.processes import collector_process, http_ok, wait_until

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
        proc = collector_process(tmp_path, hung.address, "hungcollector.", port)
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


@pytest.mark.parametrize(
    ("grace_s", "requests", "sigterms"),
    [(GRACE_S, 1, 1), (0, 4, 1), (GRACE_S, 4, 2)],
    ids=["one-request", "grace-0-four-requests", "sigterm-twice-four-requests"],
)
def test_sigterm_with_a_long_publish_timeout_answers_the_request_in_flight_503_within_the_grace(
    tmp_path: Path, grace_s: int, requests: int, sigterms: int
) -> None:
    """A publish timeout of 120 s (allowed up to 300) used to hold the stop for the request in flight: aiohttp
    waited 60 s for it, then dropped its connection, past every orchestrator's grace period (SIGKILL).
    Also with a grace of 0 and several requests in flight, and with a second SIGTERM during the grace (as
    an impatient operator or supervisor sends): it changes nothing, every request is still answered."""
    with hung_broker(tmp_path, "hunggrace.", b"nobody", 1) as hung:
        port = free_port()
        proc = collector_process(
            tmp_path,
            hung.address,
            "hunggrace.",
            port,
            collector_publish_timeout_s=120,
            collector_stop_grace_s=grace_s,
        )
        answers: list[object] = []
        try:
            wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "collector ready", proc)
            hung.pause()
            clients = [
                threading.Thread(target=_post_and_keep_the_answer, args=(port, answers), daemon=True)
                for _ in range(requests)
            ]
            for client in clients:
                client.start()
            started = time.monotonic()
            if sigterms == 2:  # sigterm_stops_in_time sends its SIGTERM 2 s after it starts
                threading.Timer(2.5, proc.proc.send_signal, args=(signal.SIGTERM,)).start()
            out = sigterm_stops_in_time(proc, f"{requests} publish(es) in flight, publish timeout 120 s")
            took = time.monotonic() - started - 2  # sigterm_stops_in_time waits 2 s before its SIGTERM
            for client in clients:
                client.join(10)
        finally:
            proc.stop(timeout=5)
    # the grace, the producer's flush given up after 1 s, its sender's close given up after 3 s (a produce
    # request waits on the hung broker)
    assert took < grace_s + 6, f"stopped {took:.1f} s after SIGTERM, grace {grace_s} s:\n{out[-3000:]}"
    assert len(answers) == requests, f"{requests - len(answers)} request(s) got no answer: {answers}"
    for answer in answers:
        assert isinstance(answer, tuple), f"no answer, the request is lost: {answers}"
        status, headers, raw = answer
        assert status == 503, answers  # what CollectorClient (and every HTTP client told to) retries
        assert headers.get("Retry-After"), headers
        assert json.loads(raw)["error"] == "shutting_down", raw
    assert "collector stopping" in out, out[-3000:]


def test_sigterm_while_the_broker_is_slow_answers_202_for_what_it_acknowledges_within_the_grace(
    tmp_path: Path,
) -> None:
    """The grace's purpose: a broker that hangs for 2 s across the SIGTERM (a leader election, a GC pause)
    acknowledges within the 5 s grace, so the requests waiting on it are answered 202, and their events are
    on the topic after the stop (the producer's 1 s flush at the stop has nothing of theirs left to send)."""
    prefix = "slowgrace."
    broker = start_private_broker(tmp_path / "tansu.log")
    assert broker.process is not None
    tansu = broker.process.pid
    paused = False
    try:
        create_topics(broker.bootstrap, prefix)
        port = free_port()
        proc = collector_process(
            tmp_path, broker.bootstrap, prefix, port, collector_publish_timeout_s=60, collector_stop_grace_s=5
        )
        answers: list[object] = []
        try:
            wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "collector ready", proc)
            os.kill(tansu, signal.SIGSTOP)
            paused = True
            clients = [
                threading.Thread(target=_post_and_keep_the_answer, args=(port, answers), daemon=True)
                for _ in range(4)
            ]
            for client in clients:
                client.start()
            time.sleep(1)  # the requests wait on the broker
            proc.proc.send_signal(signal.SIGTERM)
            time.sleep(1)
            os.kill(tansu, signal.SIGCONT)
            paused = False
            proc.proc.wait(30)
            for client in clients:
                client.join(10)
        finally:
            proc.stop(timeout=5)
        out = proc.output()
        assert proc.proc.returncode == 0, out[-3000:]
        statuses = [a[0] if isinstance(a, tuple) else a for a in answers]
        assert statuses == [202] * 4, f"{statuses}\n{out[-3000:]}"
        settings = load_settings(kafka_bootstrap=broker.bootstrap, topic_prefix=prefix)
        landed = [
            d for d in read_topic(settings, settings.topic("events.web_visits")) if isinstance(d, Decoded)
        ]
        assert len(landed) == 4, landed
    finally:
        if paused:
            os.kill(tansu, signal.SIGCONT)
        broker.stop()
