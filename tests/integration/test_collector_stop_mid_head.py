"""SIGTERM to ``leadpulse collector`` while a request's head is still arriving (the client connected and sent
part of its headers): the request is answered, 202 with its event on the topic when it ends within
``LEADPULSE_COLLECTOR_STOP_GRACE_S``, else 503 ``shutting_down``; never a connection closed unanswered. An
idle keep-alive connection (no byte of a new request) is closed without an answer, HTTP-normal, and does
not hold the stop.

Why: aiohttp's own cleanup closes every connection not running a handler, and a connection whose head had
not been parsed yet runs none: such a request was dropped (RELIABILITY.md 7e)."""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.reader import Decoded, read_topic
from streams.settings import load_settings
from tests.processes import collector_process, http_ok, wait_until

pytestmark = pytest.mark.integration

GRACE_S = 3


def _answer(sock: socket.socket) -> bytes:
    """Everything the collector sends until it closes the connection (b"" when it sent nothing)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("head_ends", ["within-the-grace", "after-the-grace"])
def test_a_request_whose_head_is_arriving_at_sigterm_is_answered(
    tmp_path: Path, broker: EmbeddedBroker, fresh_prefix: str, head_ends: str
) -> None:
    port = free_port()
    proc = collector_process(tmp_path, broker.bootstrap, fresh_prefix, port, collector_stop_grace_s=GRACE_S)
    event_id = str(uuid.uuid4())
    event = {"type": "web_visit", "event_id": event_id, "event_time": int(time.time() * 1000)}
    event.update({"anonymous_id": "a-1", "url": "https://example.com/pricing"})
    body = json.dumps([event]).encode()
    head = (
        "POST /v1/events HTTP/1.1\r\nHost: collector\r\nAuthorization: Bearer k\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "collector ready", proc)
        idle = socket.create_connection(("127.0.0.1", port), timeout=20)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: collector\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200"), "the idle connection's first request"
        sending = socket.create_connection(("127.0.0.1", port), timeout=20)
        sending.sendall(head[:40])  # the request line and part of the headers
        time.sleep(0.5)  # read by the collector
        proc.proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        wait_until(lambda: _port_closed(port), 10, "the collector closing its port at SIGTERM", proc)
        time.sleep(0.3 if head_ends == "within-the-grace" else GRACE_S + 1)
        try:
            sending.sendall(head[40:] + body)
        except OSError as exc:  # the collector closed the connection: no answer will come
            answer = type(exc).__name__.encode()
        else:
            answer = _answer(sending)
        proc.proc.wait(GRACE_S + 15)
        took = time.monotonic() - began
        dropped_idle = _answer(idle)
    finally:
        proc.stop(timeout=5)
    out = proc.output()
    assert proc.proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert dropped_idle == b"", dropped_idle  # an idle keep-alive connection is closed, nothing sent
    # it waits for the request begun (up to the grace + 5 s), never for the idle connection
    limit = GRACE_S if head_ends == "within-the-grace" else GRACE_S + 5
    assert took < limit, f"the stop took {took:.1f} s with a {GRACE_S} s grace"
    status = answer.split(b"\r\n", 1)[0]
    settings = load_settings(kafka_bootstrap=broker.bootstrap, topic_prefix=fresh_prefix)
    landed = {
        str(d.record["event_id"])
        for d in read_topic(settings, settings.topic("events.web_visits"), idle_ms=1500)
        if isinstance(d, Decoded)
    }
    if head_ends == "within-the-grace":
        assert status == b"HTTP/1.1 202 Accepted", answer
        assert event_id in landed, "a request answered 202 has its event on the topic"
    else:
        assert status == b"HTTP/1.1 503 Service Unavailable", answer
        assert b'"shutting_down"' in answer and b"\r\nRetry-After: 2\r\n" in answer, answer
        assert event_id not in landed, "refused unread: nothing of it was published"
    assert b"\r\nConnection: close\r\n" in answer, answer  # the client's next request goes elsewhere
