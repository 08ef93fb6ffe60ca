"""A report or `leadpulse sql` sent to the sink's query API gets a one-line QueryError, not a traceback, when
the sink stops answering: ``leadpulse report`` catches QueryError (and ValueError) only, so the
``URLError``/``RemoteDisconnected``/``TimeoutError`` that came out of ``http_runner`` printed a traceback."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from sinks.query_service import QueryError, http_runner

pytestmark = pytest.mark.unit


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A local TCP server answering each connection with ``handle``; yields a starter returning its port."""
    servers: list[socket.socket] = []

    def start(handle: Callable[[socket.socket], None]) -> int:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def loop() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    handle(conn)

        threading.Thread(target=loop, daemon=True).start()
        return int(server.getsockname()[1])

    yield start
    for server in servers:
        server.close()


def _read_request(conn: socket.socket) -> None:
    """The whole request (urllib sends headers and body apart): closing with bytes unread resets the
    connection, which is not the case a test means."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += conn.recv(65536)


def _closes_at_once(conn: socket.socket) -> None:
    _read_request(conn)


def _never_answers(conn: socket.socket) -> None:
    _read_request(conn)
    conn.settimeout(3)
    with contextlib.suppress(OSError):
        conn.recv(1)  # until the client gives up


def _answers_html(conn: socket.socket) -> None:
    _read_request(conn)
    body = b"<html>500 Internal Server Error</html>"
    conn.sendall(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


def test_nothing_listening_is_a_query_error() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(QueryError, match=rf"^no answer from the sink at http://127.0.0.1:{port} "):
        http_runner(f"http://127.0.0.1:{port}")("SELECT 1", None)


@pytest.mark.parametrize(
    ("handle", "said"),
    [
        (_closes_at_once, r"^no answer from the sink .*RemoteDisconnected"),
        (_never_answers, r"^no answer from the sink .*timed out"),
        (_answers_html, r"^query refused by the sink at .*: HTTP 500 Internal Server Error$"),
    ],
)
def test_a_sink_that_stops_answering_is_a_query_error(
    serve: Callable[[Callable[[socket.socket], None]], int],
    handle: Callable[[socket.socket], None],
    said: str,
) -> None:
    port = serve(handle)
    with pytest.raises(QueryError, match=said):
        http_runner(f"http://127.0.0.1:{port}", timeout=0.5)("SELECT 1", None)
