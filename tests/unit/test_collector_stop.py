"""``InFlight`` (streams/collector_publishers.py): at a collector's stop, publishes still waiting for the
broker after the grace are cut (their requests answered 503), later ones at once, and any other cancellation
of a request's task still cancels it. The whole process, on a hung broker: tests/faults/
test_collector_stop_broker_hung.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest

from streams.collector import Collector, serve
from streams.collector_publishers import InFlight, Message, PublishCut
from streams.settings import load_settings
from streams.web import bound_port

pytestmark = pytest.mark.unit


class NeverAcknowledged:
    """A publisher whose broker never answers (the hung broker of the fault test, in-process)."""

    async def start(self) -> None:
        pass

    async def publish(self, messages: Sequence[Message]) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        pass


def test_publishes_still_waiting_after_the_grace_are_cut_and_later_ones_at_once() -> None:
    async def scenario() -> tuple[list[object], float]:
        in_flight = InFlight(grace_s=0.2)
        publisher = NeverAcknowledged()
        waiting = [asyncio.create_task(in_flight.publish(publisher, [("t", None, b"v")])) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert len(in_flight) == 3
        loop = asyncio.get_running_loop()
        started = loop.time()
        await in_flight.begin_stop()
        assert in_flight.stopping and not in_flight.cut_off
        results: list[object] = list(await asyncio.gather(*waiting, return_exceptions=True))
        took = loop.time() - started
        with pytest.raises(PublishCut):
            await in_flight.publish(publisher, [("t", None, b"v")])
        assert len(in_flight) == 0
        return results, took

    results, took = asyncio.run(scenario())
    assert all(isinstance(r, PublishCut) for r in results), results
    assert 0.15 < took < 1.0, took


class AcknowledgedLater:
    """A publisher whose broker acknowledges when the test resolves ``acknowledged``."""

    def __init__(self) -> None:
        self.acknowledged: asyncio.Future[None] | None = None

    async def start(self) -> None:
        pass

    async def publish(self, messages: Sequence[Message]) -> None:
        self.acknowledged = asyncio.get_running_loop().create_future()
        await self.acknowledged

    async def stop(self) -> None:
        pass


@pytest.mark.parametrize("order", ["acknowledged-then-cut", "cut-then-acknowledged"])
def test_a_publish_acknowledged_as_the_grace_ends_is_answered_truthfully(order: str) -> None:
    """The acknowledgement and the end of the grace in one callback, either first: the publish either returns
    (202: it was acknowledged) or raises ``PublishCut`` (503, the client re-sends; duplicates are removed
    downstream), and the request's task keeps no cancellation (a later ``asyncio.timeout`` in it works)."""

    async def scenario() -> tuple[object, int, float]:
        loop = asyncio.get_running_loop()
        in_flight = InFlight(grace_s=60)
        publisher = AcknowledgedLater()

        async def request() -> tuple[object, int, float]:
            try:
                await in_flight.publish(publisher, [("t", None, b"v")])
                outcome: object = "acknowledged"
            except PublishCut as exc:
                outcome = exc
            task = asyncio.current_task()
            assert task is not None
            started = loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await asyncio.sleep(1)
            return outcome, task.cancelling(), loop.time() - started

        def acknowledge() -> None:
            assert publisher.acknowledged is not None
            if not publisher.acknowledged.done():  # cut first: aiokafka skips a cancelled future so too
                publisher.acknowledged.set_result(None)

        def grace_ends() -> None:  # what InFlight's timer runs
            in_flight._cut_all(in_flight.grace_s)

        task = asyncio.create_task(request())
        await asyncio.sleep(0)
        await in_flight.begin_stop()
        steps = [acknowledge, grace_ends] if order == "acknowledged-then-cut" else [grace_ends, acknowledge]
        loop.call_soon(lambda: [step() for step in steps])
        try:
            return await task
        finally:
            in_flight.cancel()

    outcome, cancelling, timed = asyncio.run(scenario())
    assert outcome == "acknowledged" or isinstance(outcome, PublishCut), outcome
    assert cancelling == 0 and timed < 0.5, (cancelling, timed)


def test_another_cancellation_of_a_request_still_cancels_it() -> None:
    """The cut takes back only its own cancellation: aiohttp's (its shutdown timeout) must still end it."""

    async def scenario() -> None:
        in_flight = InFlight(grace_s=60)
        task = asyncio.create_task(in_flight.publish(NeverAcknowledged(), [("t", None, b"v")]))
        await asyncio.sleep(0.05)
        await in_flight.begin_stop()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        in_flight.cancel()

    asyncio.run(scenario())


def test_the_collector_answers_503_shutting_down_in_flight_and_after_the_stop_began() -> None:
    """In-process, over HTTP: a request waiting on a broker that never answers gets 503 ``shutting_down`` with
    Retry-After once the grace ends (runner.cleanup, as at SIGTERM); one arriving while stopping gets it at
    once, and /ready is 503."""

    async def scenario() -> tuple[list[tuple[int, str | None, dict[str, Any]]], float]:
        settings = load_settings(write_keys={"web": "k"}, collector_stop_grace_s=0.3)
        collector = Collector(settings, publisher=NeverAcknowledged())
        runner = await serve(collector, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{bound_port(runner)}"
        event = {"type": "web_visit", "event_id": str(uuid.uuid4()), "event_time": int(time.time() * 1000)}
        event.update({"anonymous_id": "a-1", "url": "https://example.com/pricing"})
        answers = []
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as session:

            async def post() -> None:
                async with session.post(url + "/v1/events", json=[event]) as response:
                    answers.append(
                        (response.status, response.headers.get("Retry-After"), await response.json())
                    )

            waiting = asyncio.create_task(post())
            await asyncio.sleep(0.2)
            assert len(collector.in_flight) == 1
            started = asyncio.get_running_loop().time()
            await (
                collector.in_flight.begin_stop()
            )  # what aiohttp's on_shutdown does, the port still open here
            async with session.post(url + "/v1/events", json=[event]) as late:
                assert (late.status, (await late.json())["error"]) == (503, "shutting_down")
            await runner.cleanup()
            took = asyncio.get_running_loop().time() - started
            await waiting
            ready, detail = collector.ready()
            assert not ready and detail["stopping"], detail
        return answers, took

    answers, took = asyncio.run(scenario())
    assert [(status, retry) for status, retry, _ in answers] == [(503, "2")], answers
    assert answers[0][2]["error"] == "shutting_down", answers
    assert took < 3, f"the stop took {took:.1f} s with a 0.3 s grace"


class Acknowledged:
    """A publisher whose broker acknowledges at once."""

    async def start(self) -> None:
        pass

    async def publish(self, messages: Sequence[Message]) -> None:
        await asyncio.sleep(0)

    async def stop(self) -> None:
        pass


@pytest.mark.parametrize("body_ends", ["within-the-grace", "after-the-grace"])
def test_a_request_still_sending_its_body_at_the_stop_gets_an_answer(body_ends: str) -> None:
    """A request reading its body (not publishing) when the stop begins is never cut there: its body ends
    within the grace, it is published and answered 202; after it, it is answered 503 ``shutting_down``
    without publishing. Never a 500 or a connection closed unanswered. Before StoppingRunner aiohttp closed
    the connection first and dropped the rest of the body: the request waited for aiohttp's shutdown
    timeout (grace + 5 s), holding the stop, and its connection was closed unanswered."""

    async def scenario() -> tuple[bytes, float, float]:
        settings = load_settings(write_keys={"web": "k"}, collector_stop_grace_s=0.5)
        collector = Collector(settings, publisher=Acknowledged())
        runner = await serve(collector, "127.0.0.1", 0)
        event = {"type": "web_visit", "event_id": str(uuid.uuid4()), "event_time": int(time.time() * 1000)}
        event.update({"anonymous_id": "a-1", "url": "https://example.com/pricing"})
        body = json.dumps([event]).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", bound_port(runner))
        head = (
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body[:10])
        await writer.drain()
        await asyncio.sleep(0.1)  # the handler waits for the rest of the body
        began = time.monotonic()
        stopping = asyncio.create_task(runner.cleanup())  # what SIGTERM does
        await asyncio.sleep(0.1 if body_ends == "within-the-grace" else 0.8)
        assert collector.in_flight.stopping
        writer.write(body[10:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await stopping
        accepted = collector.metrics.registry.get_sample_value(
            "leadpulse_collector_events_total", {"source": "web", "result": "accepted"}
        )
        return answer, accepted or 0, time.monotonic() - began

    answer, accepted, took = asyncio.run(scenario())
    assert took < 3, f"the stop took {took:.1f} s (grace 0.5 s); it waited for a body that was dropped"
    status = answer.split(b"\r\n", 1)[0]
    if body_ends == "within-the-grace":
        assert status == b"HTTP/1.1 202 Accepted" and accepted == 1, answer
    else:
        assert status == b"HTTP/1.1 503 Service Unavailable", answer
        assert b'"shutting_down"' in answer and accepted == 0, answer
        assert b"\r\nConnection: close\r\n" in answer, answer  # its retry opens a connection elsewhere


@pytest.mark.parametrize(
    "case", ["head-then-gone", "body-drained-after-answer", "answered-by-aiohttp", "blank-line-after-answer"]
)
def test_connections_with_no_request_to_answer_do_not_hold_the_stop(case: str) -> None:
    """The stop waits for a head that was arriving (tests/integration/test_collector_stop_mid_head.py), not
    for a client that sent part of a head and closed, nor for the rest of a body sent after its request was
    answered unread (401 here: aiohttp drains it; those bytes are no new request's head), nor for a
    keep-alive connection idle after an answer aiohttp gave without the collector's middleware (417 to an
    unknown ``Expect``) or after the empty line some clients send after a body (RFC 9112 2.2): both held the
    stop for the grace + 5 s, taken for a head arriving."""

    async def scenario() -> tuple[float, bytes]:
        settings = load_settings(write_keys={"web": "k"}, collector_stop_grace_s=10)
        collector = Collector(settings, publisher=Acknowledged())
        runner = await serve(collector, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", bound_port(runner))
        answer = b""
        if case == "head-then-gone":
            writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAutho")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.close()
        elif case in ("answered-by-aiohttp", "blank-line-after-answer"):
            expect = b"Expect: something\r\n" if case == "answered-by-aiohttp" else b""
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n%s\r\n" % expect)
            await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.05)
            if case == "blank-line-after-answer":
                writer.write(b"\r\n")
                await writer.drain()
        else:
            body = b'[{"type": "web_visit"}]' * 100
            writer.write(
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:10])
            )
            await writer.drain()
            answer = await reader.readuntil(b"}")  # the 401, its body read no further
            writer.write(body[10:])
            await writer.drain()
        await asyncio.sleep(0.2)
        began = time.monotonic()
        await runner.cleanup()
        writer.close()
        return time.monotonic() - began, answer

    took, answer = asyncio.run(scenario())
    assert took < 2, f"the stop took {took:.1f} s (grace 10 s): it waited for a request no one was sending"
    if case == "body-drained-after-answer":
        assert answer.startswith(b"HTTP/1.1 401"), answer
    if case == "answered-by-aiohttp":
        assert answer.startswith(b"HTTP/1.1 417"), answer


def test_an_aiohttp_without_server_kwargs_still_serves_with_its_own_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``StoppingRunner`` rebuilds aiohttp's server from ``Server._kwargs`` (undocumented; pyproject allows
    any aiohttp 3.x from 3.14): without it the collector serves with aiohttp's own server and says what it
    loses, rather than failing at every start with an AttributeError. Simulated: an aiohttp keeping the
    handler's arguments under another name."""
    from aiohttp import web

    from streams import collector_stop

    class Renamed(web.Server):
        def __call__(self) -> web.RequestHandler:
            return web.RequestHandler(self, loop=self._loop, **self.handler_kwargs)

    made_servers: list[web.Server] = []
    original = web.AppRunner._make_server

    async def without_kwargs(self: web.AppRunner) -> web.Server:
        server = await original(self)
        server.__class__ = Renamed
        server.handler_kwargs = server.__dict__.pop("_kwargs")  # type: ignore[attr-defined]
        made_servers.append(server)
        return server

    monkeypatch.setattr(web.AppRunner, "_make_server", without_kwargs)

    async def scenario() -> int:
        settings = load_settings(write_keys={"web": "k"})
        runner = await serve(Collector(settings, publisher=Acknowledged()), "127.0.0.1", 0)
        try:
            url = f"http://127.0.0.1:{bound_port(runner)}/health"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                return response.status
        finally:
            await runner.cleanup()

    with caplog.at_level("WARNING", logger=collector_stop.__name__):
        assert asyncio.run(scenario()) == 200
    assert len(made_servers) == 1 and isinstance(made_servers[0], Renamed)
    assert "has no Server._kwargs" in caplog.text
