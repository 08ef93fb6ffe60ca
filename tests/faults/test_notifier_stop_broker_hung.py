"""SIGTERM to the notifier while its broker hangs right after a commit, with the targets' progress record
(``agents/notifier_progress.py``) sent and not acknowledged: ``leadpulse notifier`` exits 0 within the 25 s
the other processes are given (tests/faults/test_shutdown_broker_hung.py), and nothing is lost.

Before stop 30 the stop took 33 s: the SIGTERM cancelled the progress write (its record stayed in the
producer), the stop's commit (to write that progress again) waited its 10 s, the consumer's close 10 s, and
the producer's close 10 s more for the record before it was closed without it. The commit given up also left
aiokafka's own commit task to fail at the close: "Task exception was never retrieved", a traceback at exit.

How the moment is hit: Tansu advertises the proxy's address, so every connection goes through it, and the
proxy pauses Tansu (SIGSTOP) when the notifier's producer sends its first Produce request: the first progress
record, written right after a commit (one target answers 503 throughout, so nothing is dead-lettered and the
other target's deliveries are progress above the committed offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import subprocess
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sinks.webhook import IDEMPOTENCY_HEADER
from streams.broker import EmbeddedBroker, create_topics, free_port, tansu_binary
from streams.settings import load_settings
from tests.faults.pausing_proxy import PausingProxy, sigterm_stops_in_time
from tests.integration.test_webhooks import SECRET, hot_lead, publish
from tests.processes import CliProcess, leadpulse_env, wait_until

pytestmark = pytest.mark.faults

PRODUCE = 0  # the Produce request's API key
HOT_LEADS = 12


class ProducePausingProxy(PausingProxy):
    """Pauses on the ``nth`` Produce request of ``client`` (any connection), before forwarding it."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        await self._relay(self._requests(reader, up_writer), up_reader, writer, up_writer)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while True:
                size = await reader.readexactly(4)
                request = await reader.readexactly(struct.unpack(">i", size)[0])
                # api key, api version, correlation id, then the client id (int16 length + bytes)
                (api_key,) = struct.unpack(">h", request[:2])
                (length,) = struct.unpack(">h", request[8:10])
                client_id = request[10 : 10 + max(length, 0)]
                if api_key == PRODUCE and client_id.startswith(self.client):
                    self.clients.append(client_id)
                    self.seen += 1
                    if self.seen == self.nth:
                        self.pause()
                        self.paused.set()
                writer.write(size + request)
                await writer.drain()


@contextlib.contextmanager
def broker_behind_proxy(tmp_path: Path, prefix: str) -> Iterator[tuple[ProducePausingProxy, EmbeddedBroker]]:
    """A private Tansu reached only through a ``ProducePausingProxy`` armed for the notifier's producer."""
    broker = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", free_port(), tmp_path / "tansu.log")

    def pause() -> None:
        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGSTOP)

    proxy = ProducePausingProxy((broker.host, broker.port), pause, b"aiokafka-producer", 1).start()
    log = (tmp_path / "tansu.log").open("ab")
    try:
        broker.process = subprocess.Popen(
            [
                *(str(broker.binary), "broker", "--listener-url", f"tcp://{broker.bootstrap}"),
                *("--advertised-listener-url", f"tcp://{proxy.address}"),
                *("--storage-engine", "memory://tansu/", "--cluster-id", broker.cluster_id),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        broker.wait_ready(30)
        create_topics(proxy.address, prefix)
        yield proxy, broker
    finally:
        if proxy.paused.is_set() and broker.process is not None:
            os.kill(broker.process.pid, signal.SIGCONT)
        proxy.stop()
        broker.stop()
        log.close()


class Receivers(ThreadingHTTPServer):
    """``/ok`` takes every notification; ``/fail`` answers 503 until ``failing`` is cleared."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failing = True
        self.accepted: dict[str, set[str]] = defaultdict(set)  # path -> idempotency keys

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path}"


class _Handler(BaseHTTPRequestHandler):
    server: Receivers

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.strip("/")
        ok = path == "ok" or not self.server.failing
        if ok:
            self.server.accepted[path].add(self.headers.get(IDEMPOTENCY_HEADER, ""))
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_sigterm_with_a_progress_record_unacknowledged_stops_in_time_and_loses_nothing(
    tmp_path: Path,
) -> None:
    prefix = "hungprogress."
    receivers = Receivers()
    threading.Thread(target=receivers.serve_forever, daemon=True).start()
    try:
        stop_and_restart(tmp_path, prefix, receivers)
    finally:
        receivers.shutdown()
        receivers.server_close()


def stop_and_restart(tmp_path: Path, prefix: str, receivers: Receivers) -> None:
    with broker_behind_proxy(tmp_path, prefix) as (proxy, broker):
        leads = [hot_lead(n) for n in range(HOT_LEADS)]
        publish(load_settings(kafka_bootstrap=proxy.address, topic_prefix=prefix), leads)
        env = leadpulse_env(
            kafka_bootstrap=proxy.address,
            topic_prefix=prefix,
            data_dir=tmp_path / "notifier",
            notifier_port=free_port(),
            webhook_urls=json.dumps([receivers.url("ok"), receivers.url("fail")]),
            webhook_secret=SECRET,
            webhook_max_attempts=100,  # no dead letter (a Produce request of its own) before the stop
            webhook_backoff_base_s=0.2,
            webhook_backoff_cap_s=1,
        )
        proc = CliProcess(["notifier"], env, tmp_path / "notifier.log")
        try:
            wait_until(proxy.paused.is_set, 60, f"the notifier's first Produce ({proxy.clients})", proc)
            out = sigterm_stops_in_time(proc, "a progress record in flight")
        finally:
            proc.stop(timeout=5)
        # what it gave up: the progress record it was writing, and the one left in the producer
        assert "partition(s) not written, given up at the stop" in out, out[-3000:]
        assert "records the broker had not acknowledged were given up at the stop" in out, out[-3000:]

        # Nothing lost: Tansu resumed, a new notifier with both targets answering delivers to the failing
        # one every notification (the healthy one may get some again: the progress was not written).
        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGCONT)
        receivers.failing = False
        env["LEADPULSE_NOTIFIER_PORT"] = str(free_port())
        again = CliProcess(["notifier"], env, tmp_path / "notifier-2.log")
        try:
            wait_until(lambda: len(receivers.accepted["fail"]) == HOT_LEADS, 60, "every lead at /fail", again)
        finally:
            again.stop()
        assert len(receivers.accepted["ok"]) == HOT_LEADS
