"""The collector client (``generate --via collector``, ``demo --via collector``) against a real HTTP server:
sales activities are posted with the browser events around them, not a hundred at a time later."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from streams.backoff import backoff_seconds
from streams.collector_client import CollectorClient, CollectorRejected

pytestmark = pytest.mark.integration


Posted = list[tuple[str, list[str]]]  # (write key, event ids) per request, in arrival order


@pytest.fixture
def server() -> Iterator[tuple[str, list[str | int], Posted]]:
    """A stand-in collector that records each request and answers in the order of ``script``: "drop" closes
    the connection unanswered, an int is the status (429/503 with Retry-After: 0), "503-date" a 503 whose
    Retry-After is an HTTP date; once the script is used up, 202."""
    script: list[str | int] = []
    posted: Posted = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            key = self.headers["Authorization"].removeprefix("Bearer ")
            posted.append((key, [e["event_id"] for e in body["batch"]]))
            step = script.pop(0) if script else 202
            if step == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if step == "503-date":  # as a proxy in front of the collector may answer
                self.send_response(503)
                self.send_header("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")  # in the past: now
            else:
                self.send_response(int(step))
            if step in (429, 503):
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script, posted
    finally:
        httpd.shutdown()


def visit(n: int) -> dict[str, object]:
    return {"event_id": f"v{n}", "event_time": 1, "lead_id": "L1", "url": "u"}


def activity(n: int) -> dict[str, object]:
    return {"event_id": f"a{n}", "event_time": 1, "lead_id": "L1", "activity": "first_touch"}


def test_a_full_browser_batch_takes_the_waiting_sales_activities_with_it(
    server: tuple[str, list[str | int], Posted],
) -> None:
    url, _, posted = server
    with CollectorClient(url, "web", "crm", batch_size=10, max_wait_s=60) as client:
        for n in range(10):
            client.send("web_visit", visit(n))
            if n in (2, 5):
                client.send("sales_activity", activity(n))
        # the tenth visit filled its batch: both buffers went out, the activities did not wait for ten
        assert sorted(key for key, _ in posted) == ["crm", "web"]
        assert dict(posted)["crm"] == ["a2", "a5"]


def test_an_activity_waits_at_most_max_wait(server: tuple[str, list[str | int], Posted]) -> None:
    url, _, posted = server
    with CollectorClient(url, "web", "crm", batch_size=100, max_wait_s=0.3) as client:
        client.send("sales_activity", activity(1))
        assert posted == []
        time.sleep(0.4)
        client.send("web_visit", visit(1))  # the next send finds the activity overdue
        assert ("crm", ["a1"]) in posted and ("web", ["v1"]) in posted


def test_a_dropped_connection_and_503s_are_retried_with_the_same_events(
    server: tuple[str, list[str | int], Posted],
) -> None:
    """A collector restarted mid-run ended ``generate --via collector`` with a BrokenPipeError (ops audit);
    the client contract in docs/ingestion.md is to retry the same batch."""
    url, script, posted = server
    script.extend(["drop", 503, 429])
    with CollectorClient(url, "web", "crm", batch_size=3, max_wait_s=60) as client:
        for n in range(3):
            client.send("web_visit", visit(n))
        assert client.accepted == 3
    assert posted == [("web", ["v0", "v1", "v2"])] * 4


def test_a_refusal_is_not_retried(server: tuple[str, list[str | int], Posted]) -> None:
    url, script, posted = server
    script.append(400)
    client = CollectorClient(url, "web", "crm", batch_size=1)
    with pytest.raises(CollectorRejected, match="collector answered 400"):
        client.send("web_visit", visit(1))
    assert posted == [("web", ["v1"])]


def test_a_retry_after_given_as_an_http_date_is_waited_for_not_a_crash(
    server: tuple[str, list[str | int], Posted],
) -> None:
    """RFC 9110 allows Retry-After as an HTTP date (load balancers and proxies send one): float() of it
    raised ValueError out of the client, ending the run instead of retrying the batch."""
    url, script, posted = server
    script.append("503-date")
    with CollectorClient(url, "web", "crm", batch_size=1) as client:
        client.send("web_visit", visit(1))
        assert client.accepted == 1
    assert posted == [("web", ["v1"])] * 2


def test_a_retry_after_of_zero_or_in_the_past_still_waits_the_back_off(
    server: tuple[str, list[str | int], Posted], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 or 429 with Retry-After 0, or an HTTP date already past, made the client re-send at once, as
    fast as the server answered, for all of ``retry_for_s``: hammering a collector (or a proxy in front of it)
    that had just said it is overloaded. It now waits at least its own back-off."""
    url, script, posted = server
    script.extend([503, "503-date", 429])
    slept: list[float] = []
    monkeypatch.setattr("streams.collector_client.time.sleep", slept.append)
    with CollectorClient(url, "web", "crm", batch_size=1) as client:
        client.send("web_visit", visit(1))
        assert client.accepted == 1
    assert posted == [("web", ["v1"])] * 4
    assert slept == [backoff_seconds(n, 0.2, 5.0) for n in (2, 3, 4)]
