"""A TCP proxy in front of a private Tansu that hangs it (SIGSTOP, by the caller's ``pause``) when a given
client's nth connection arrives: how the start-under-a-hung-broker fault tests put a process at one step of
its start (tests/faults/test_*_start_broker_hung.py, test_collector_stop_broker_hung.py), and the two steps
those tests share: ``hung_broker`` and ``sigterm_stops_in_time``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.broker import create_topics, free_port, start_private_broker
from tests.processes import CliProcess


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
        self.clients: list[bytes] = []  # every connection's client id, in order (for a failure's message)
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
        self.clients.append(client_id)
        if client_id.startswith(self.client):
            self.seen += 1
            if self.seen == self.nth:
                self.pause()
                self.paused.set()
        up_writer.write(head + client_id)
        await self._relay(self._pipe(reader, up_writer), up_reader, writer, up_writer)

    async def _relay(
        self,
        requests: Awaitable[None],
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Run ``requests`` (the client's side, forwarded upstream) beside the answers piped back, both
        connections known to ``stop`` meanwhile and aborted at the end."""
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(requests, self._pipe(up_reader, writer))
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


#: As tests/faults/test_shutdown_broker_hung.py: under the shortest grace period a process is given (30 s).
STOP_WITHIN_S = 25.0


@dataclass
class HungBroker:
    """A private Tansu behind a ``PausingProxy``: processes under test connect to ``address``."""

    proxy: PausingProxy
    pause: Callable[[], None]  # hangs the broker now (for a step no client id marks)
    paused: threading.Event  # set once the broker hangs, by the proxy or by ``pause``

    @property
    def address(self) -> str:
        return self.proxy.address


@contextlib.contextmanager
def hung_broker(tmp_path: Path, prefix: str, client: bytes, nth: int) -> Iterator[HungBroker]:
    """A private Tansu with the catalogue under ``prefix``, paused (SIGSTOP) when the ``nth`` connection of
    ``client`` comes in; resumed and stopped on exit."""
    broker = start_private_broker(tmp_path / "tansu.log")
    assert broker.process is not None
    tansu_pid = broker.process.pid
    paused = threading.Event()

    def pause() -> None:
        os.kill(tansu_pid, signal.SIGSTOP)
        paused.set()

    proxy: PausingProxy | None = None
    try:
        create_topics(broker.bootstrap, prefix)
        proxy = PausingProxy((broker.host, broker.port), pause, client, nth).start()
        yield HungBroker(proxy, pause, paused)
    finally:
        if paused.is_set():
            os.kill(tansu_pid, signal.SIGCONT)
        if proxy is not None:
            proxy.stop()
        broker.stop()


def sigterm_stops_in_time(proc: CliProcess, what: str) -> str:
    """SIGTERM ``proc`` (still running, its step waiting on the hung broker for 2 s) and check it exits 0
    within ``STOP_WITHIN_S`` without a traceback or an unclosed client; its output."""
    time.sleep(2)  # the step is under way, waiting for an answer
    assert proc.proc.poll() is None, f"it exited when the broker hung ({what}):\n{proc.output()[-3000:]}"
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(Exception):
        proc.proc.wait(90)
    took = time.monotonic() - started
    out = proc.output()
    print(f"\nstop time with the broker hung at {what}: {took:.1f} s")
    assert proc.proc.returncode is not None, f"still running 90 s after SIGTERM:\n{out[-3000:]}"
    assert proc.proc.returncode == 0, f"exited with {proc.proc.returncode}:\n{out[-3000:]}"
    assert took < STOP_WITHIN_S, f"took {took:.1f}s to stop:\n{out[-3000:]}"
    for bad in ("Traceback", "Unclosed", "CancelledError"):
        assert bad not in out, f"{bad!r} in its output:\n{out[-4000:]}"
    return out
