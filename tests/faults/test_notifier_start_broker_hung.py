"""SIGTERM while the broker hangs during the notifier's start: ``leadpulse notifier`` exits 0 within the
25 s the other processes are given (tests/faults/test_shutdown_broker_hung.py), at each step of its start.

How a step is hit: the notifier is pointed at a proxy in front of a private Tansu, and the proxy pauses
Tansu (SIGSTOP) when the ``nth`` connection of a client (kafka-python or aiokafka, told by the client id in
the request header) comes in. The steps before it have finished, so the process is where a broker hanging at
that moment leaves it. The steps, with what they did before stop 28:

- the erasure log's topic check (``streams.erasures.ErasureLog.start``): two blocking kafka-python calls in
  ``asyncio.to_thread``, each waiting up to 30 s for a bootstrap answer. A stop cancelled the wait but not
  the thread, and ``asyncio.run`` waits for its executor's threads at exit: SIGTERM took 28 s.
- the producer's start (``Notifier._run``): not given up at a stop, it waited 40 s for a bootstrap answer and
  failed; SIGTERM took 38 s and the notifier exited 1, "cannot reach the Kafka broker".
- the erasure log's consumer start and the consumer's group join were already given up at a stop
  (``finished_before_stop``, ``start_unless_stopped``): covered so that they stay so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, create_topics, free_port, tansu_binary
from streams.settings import load_settings
from tests.processes import CliProcess, leadpulse_env, wait_until

pytestmark = pytest.mark.faults

#: As tests/faults/test_shutdown_broker_hung.py: under the notifier's 30 s grace period.
STOP_WITHIN_S = 25.0


class PausingProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream`` and calls ``pause`` once, before forwarding it, when the
    ``nth`` connection whose first request names a client id starting with ``client`` comes in (the client
    id is in every request's header)."""

    def __init__(self, upstream: tuple[str, int], pause: Callable[[], None], client: bytes, nth: int) -> None:
        self.upstream = upstream
        self.pause = pause
        self.client = client
        self.nth = nth
        self.seen = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = free_port()
        self.paused = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pausing-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> PausingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in self._writers:  # the handlers' reads end, and so do the handlers
                writer.transport.abort()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.wait(handlers, timeout=3) if handlers else None

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # size, api key, api version, correlation id, then the client id (int16 length + bytes)
            head = await reader.readexactly(14)
            (length,) = struct.unpack(">h", head[12:14])
            client_id = await reader.readexactly(max(length, 0))
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()
            return
        if client_id.startswith(self.client):
            self.seen += 1
            if self.seen == self.nth:
                self.pause()
                self.paused.set()
        up_writer.write(head + client_id)
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


@pytest.mark.parametrize(
    ("client", "nth", "where"),
    [
        # the erasure log's consumer, its first client
        (b"aiokafka", 1, "notifier stopped while reading the erasure log"),
        # the erasure log's topic check (kafka-python, in a thread)
        (b"kafka-python", 1, "notifier stopped while reading the erasure log"),
        # the dead-letter producer's start (aiokafka: the erasure log's consumer bootstrapped first)
        (b"aiokafka", 2, "notifier stopped before its producer started"),
        # the consumer's group join
        (b"aiokafka", 3, "notifier stopped before its first partition assignment"),
    ],
    ids=["erasure-log-consumer", "erasure-log-topic-check", "producer-start", "group-join"],
)
def test_sigterm_while_the_broker_hangs_at_the_notifiers_start_exits_in_time(
    tmp_path: Path, client: bytes, nth: int, where: str
) -> None:
    broker = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", free_port(), tmp_path / "tansu.log")
    broker.start()
    assert broker.process is not None
    tansu_pid = broker.process.pid
    prefix = "hungstart."
    create_topics(broker.bootstrap, prefix)
    pause = lambda: os.kill(tansu_pid, signal.SIGSTOP)  # noqa: E731
    proxy = PausingProxy((broker.host, broker.port), pause, client, nth).start()
    env = leadpulse_env(
        kafka_bootstrap=proxy.address,
        topic_prefix=prefix,
        data_dir=tmp_path / "notifier",
        notifier_port=free_port(),
        webhook_urls=json.dumps([f"http://127.0.0.1:{free_port()}/hook"]),
        webhook_secret="s3cret-for-test-0123456789abcdef",
    )
    proc = CliProcess(["notifier"], env, tmp_path / "notifier.log")
    try:
        wait_until(proxy.paused.is_set, 60, "the notifier's first kafka-python request", proc)
        time.sleep(2)  # the blocking call is under way, waiting for an answer
        assert proc.proc.poll() is None, f"the notifier exited when the broker hung:\n{proc.output()[-3000:]}"
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.proc.wait(90)
        took = time.monotonic() - started
        out = proc.output()
        print(f"\nnotifier stop time with the broker hung during its start: {took:.1f} s")
        assert proc.proc.returncode is not None, f"still running 90 s after SIGTERM:\n{out[-3000:]}"
        assert proc.proc.returncode == 0, f"exited with {proc.proc.returncode}:\n{out[-3000:]}"
        assert took < STOP_WITHIN_S, f"took {took:.1f}s to stop:\n{out[-3000:]}"
        assert where in out, out[-3000:]
        for bad in ("Traceback", "Unclosed", "CancelledError"):
            assert bad not in out, f"{bad!r} in its output:\n{out[-4000:]}"
    finally:
        if proxy.paused.is_set():
            os.kill(tansu_pid, signal.SIGCONT)
        proc.stop(timeout=5)
        proxy.stop()
        broker.stop()
