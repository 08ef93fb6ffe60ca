"""The collector's stop at SIGTERM: close the port, then answer every request a client had begun to send.

Why apart from aiohttp's own runner: its cleanup closes every connection not running a handler, and drops
the bytes still arriving on the others. A request whose body was on its way at SIGTERM, or whose head was
(no handler runs before the head is complete), was closed unanswered. ``StoppingRunner`` waits for them
(202 within ``LEADPULSE_COLLECTOR_STOP_GRACE_S``, then 503 ``shutting_down``: ``InFlight``), and
``Connection`` is what tells a head arriving from an idle keep-alive connection: aiohttp keeps no state
saying so that can be read (its C parser hides its buffer). An idle connection is closed unanswered, as
HTTP allows; its client's next request opens a connection to a collector that is not stopping.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import __version__ as aiohttp_version
from aiohttp import web
from aiohttp.streams import StreamReader

if TYPE_CHECKING:
    from streams.collector_publishers import InFlight

log = logging.getLogger(__name__)

#: How often the stop looks whether the requests it waits for were answered.
POLL_S = 0.02


class Connection(web.RequestHandler):
    """aiohttp's handler of one connection, noting whether bytes of a request arrived that no handler runs
    for yet (``head_arriving``): its head is incomplete, or complete and its handler not started.

    The collector's middleware calls ``request_began`` and ``request_ended``; bytes arriving while a request
    runs, or after it while aiohttp drains a body it did not read, are that request's body. Pipelined bytes
    of the next request in one segment with the end of a body are not told apart (browsers do not
    pipeline): that request's connection is closed at a stop, as an idle one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_arriving = False
        self.answering = False
        self.head_at_stop = False  # its request is read like one begun before the stop
        self.began_before_stop = False  # of the request running now
        self._draining: StreamReader | None = None  # the last request's body, while not all received

    def data_received(self, data: bytes) -> None:
        # (empty lines before a head are no request: RFC 9112 2.2, sent by some clients after a body)
        if data and not self.answering and (self._draining is None or self._draining.is_eof()):
            self.head_arriving = self.head_arriving or bool(data.strip(b"\r\n"))
        super().data_received(data)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Every answer, also one aiohttp gives without the middleware (a 417 to an unknown ``Expect``):
        its head is no longer arriving (once marked, an idle keep-alive connection held the stop)."""
        self.head_arriving = self.head_at_stop = False
        return await super().finish_response(request, resp, start_time)

    def request_began(self) -> None:
        self.began_before_stop, self.head_at_stop = self.head_at_stop, False
        self.head_arriving = False
        self.answering = True

    def request_ended(self, request: web.BaseRequest) -> None:
        self.answering = False
        self._draining = None if request.content.is_eof() else request.content


class _Server(web.Server):
    """aiohttp's low-level server, making a ``Connection`` per connection (as its own ``__call__`` makes a
    ``RequestHandler``, with the same arguments)."""

    def __call__(self) -> Connection:
        return Connection(self, loop=self._loop, **self._kwargs)


def request_began(request: web.BaseRequest) -> None:
    """For the collector's middleware: the request's handler starts (its head is complete)."""
    if isinstance(request.protocol, Connection):
        request.protocol.request_began()


def request_ended(request: web.BaseRequest) -> None:
    """For the collector's middleware: the request is answered."""
    if isinstance(request.protocol, Connection):
        request.protocol.request_ended(request)


def admitted(request: web.BaseRequest) -> bool:
    """Whether a request begun after the stop is read all the same: its head was arriving when the stop began,
    so it is read and published like a request begun before it (202 within the grace), not refused unread."""
    return isinstance(request.protocol, Connection) and request.protocol.began_before_stop


def shutting_down(reason: str) -> web.Response:
    """503 ``shutting_down``: a request begun after the stop, or not acknowledged within the grace."""
    resend = "retry it with the same event_ids (its events may still land: duplicates are removed downstream)"
    response = web.json_response(
        {"error": "shutting_down", "message": f"{reason}; not acknowledged, {resend}"},
        status=503,
        headers={"Retry-After": "2"},
    )
    response.force_close()  # Connection: close: its retry goes to a collector that is not stopping
    return response


class StoppingRunner(web.AppRunner):
    """The collector's runner: ``cleanup`` (at SIGTERM) closes the port, begins the stop and waits for every
    request a client had begun to send to be answered, then lets aiohttp close the connections.

    Waited for, up to the grace + 5 s: a request running (its body may still be arriving) and a connection
    whose head was arriving at the stop, until its handler has answered or its client closed it. aiohttp's
    wait, once it has closed the connections, only backs it up (1 s)."""

    def __init__(self, app: web.Application, in_flight: InFlight, **kwargs: Any) -> None:
        super().__init__(app, shutdown_timeout=1.0, **kwargs)
        self.in_flight = in_flight
        self.wait_s = in_flight.grace_s + 5

    async def _make_server(self) -> web.Server:
        """aiohttp's server for the app, remade as a ``_Server`` with its arguments: aiohttp has no setting
        for the connection class (``_kwargs`` is the one attribute read that it does not document; without it,
        aiohttp's own server, logged)."""
        made = await super()._make_server()
        kwargs = getattr(made, "_kwargs", None)
        if not isinstance(kwargs, dict):  # another aiohttp 3.x: serve all the same, without this one feature
            log.warning(
                "collector: this aiohttp (%s) has no Server._kwargs; a request whose head is still arriving "
                "at a stop is closed unanswered (RELIABILITY.md 7e)",
                aiohttp_version,
            )
            return made
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **kwargs,
        )

    async def cleanup(self) -> None:
        for site in list(self.sites):
            await site.stop()
        for _ in range(2):  # bytes the OS already received are read: a head may complete, or begin
            await asyncio.sleep(0)
        for connection in self._connections():
            connection.head_at_stop = connection.head_arriving
        await self.in_flight.begin_stop()  # never suspends: a head completing from now on finds its mark
        if waiting := self._waiting():
            log.info(
                "collector stopping: %d request(s) begun before the stop (head or body maybe still arriving) "
                "are read and answered, for up to %g s",
                waiting,
                self.wait_s,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while (waiting := self._waiting()) and loop.time() < deadline:
            await asyncio.sleep(POLL_S)
        if waiting:
            log.warning(
                "collector stopping: %d request(s) still unanswered after %g s (a head or body still "
                "arriving), their connections closed",
                waiting,
                self.wait_s,
            )
        await super().cleanup()

    def _connections(self) -> list[Connection]:
        server = self.server
        connections = server.connections if server is not None else []
        return [c for c in connections if isinstance(c, Connection) and c.transport is not None]

    def _waiting(self) -> int:
        return sum(c.answering or c.head_at_stop for c in self._connections())
