"""SIGTERM to ``leadpulse collector`` under load, with a healthy broker: every request that got 202 has all
its events on the topic (a 202 for records not acknowledged would be data loss), every other answer is a
503 the client retries, never a 500, and the process exits 0.

Why: at a stop ``InFlight`` cuts publishes still waiting after ``LEADPULSE_COLLECTOR_STOP_GRACE_S`` by
cancelling their request's task; a grace of 0 makes that cut race the broker's acknowledgements of many
concurrent requests (the one at the stop of one request cannot be timed from outside, so many are sent).
The producer's close flushes for at most 1 s: only records of requests answered 503 may be left unsent."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.reader import Decoded, read_topic
from streams.settings import load_settings
from tests.processes import collector_process, http_ok, wait_until

pytestmark = pytest.mark.integration

CLIENTS = 12
BATCH = 20


def _client(port: int, stop: threading.Event, outcomes: list[tuple[object, list[str]]]) -> None:
    """Post batches, one connection each, until the port is closed; keeps (answer, event ids) per request:
    the status and error code, or the OS error's class when the request got no answer."""
    while True:
        ids = [str(uuid.uuid4()) for _ in range(BATCH)]
        now = int(time.time() * 1000)
        body = [
            {
                "type": "web_visit",
                "event_id": i,
                "event_time": now,
                "anonymous_id": "a-1",
                "url": "https://e.x/",
            }
            for i in ids
        ]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/events",
            data=json.dumps(body).encode(),
            headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                outcomes.append(((response.status, None), ids))
        except urllib.error.HTTPError as exc:
            outcomes.append(((exc.code, json.loads(exc.read()).get("error")), ids))
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                return  # the port is closed: nothing was sent
            outcomes.append((type(exc.reason).__name__, ids))
        except OSError as exc:  # sent, no answer: a connection the stop closed (see the test)
            outcomes.append((type(exc).__name__, ids))
        if stop.is_set():
            return


@pytest.mark.parametrize("grace_s", [0, 2])
def test_sigterm_under_load_answers_202_only_for_events_on_the_topic(
    tmp_path: Path, broker: EmbeddedBroker, fresh_prefix: str, grace_s: int
) -> None:
    port = free_port()
    proc = collector_process(tmp_path, broker.bootstrap, fresh_prefix, port, collector_stop_grace_s=grace_s)
    outcomes: list[tuple[object, list[str]]] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=_client, args=(port, stop, outcomes), daemon=True) for _ in range(CLIENTS)
    ]
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "collector ready", proc)
        for client in clients:
            client.start()
        wait_until(lambda: len(outcomes) >= 3 * CLIENTS, 60, "requests answered under load", proc)
        proc.proc.send_signal(signal.SIGTERM)
        proc.proc.wait(grace_s + 30)
        stop.set()
        for client in clients:
            client.join(30)
    finally:
        stop.set()
        proc.stop(timeout=5)
    out = proc.output()
    assert proc.proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    answers = Counter(answer for answer, _ in outcomes)
    print(f"\nanswers at a stop with grace {grace_s} s: {dict(answers)}")
    settings = load_settings(kafka_bootstrap=broker.bootstrap, topic_prefix=fresh_prefix)
    landed = {
        str(d.record["event_id"])
        for d in read_topic(settings, settings.topic("events.web_visits"), idle_ms=1500)
        if isinstance(d, Decoded)
    }
    acknowledged = [ids for answer, ids in outcomes if answer == (202, None)]
    assert acknowledged, answers
    lost = [i for ids in acknowledged for i in ids if i not in landed]
    assert not lost, f"{len(lost)} events answered 202 are not on the topic ({dict(answers)})"
    refused = [i for answer, ids in outcomes if answer == (503, "shutting_down") for i in ids]
    dropped = [i for answer, ids in outcomes if isinstance(answer, str) for i in ids]
    print(f"landed all the same: {sum(i in landed for i in refused)}/{len(refused)} events answered 503,")
    print(f"{sum(i in landed for i in dropped)}/{len(dropped)} of requests without an answer")
    for answer in answers:
        assert answer in {(202, None), (503, "shutting_down")} or isinstance(answer, str), answers
