"""A TCP proxy in front of a private Tansu that hangs it (SIGSTOP, by the caller's ``pause``) when a given
client's nth connection arrives: how the start-under-a-hung-broker fault tests put a process at one step of
its start (tests/faults/test_notifier_start_broker_hung.py, test_worker_start_broker_hung.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Callable

from streams.broker import free_port


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
