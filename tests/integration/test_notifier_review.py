"""Findings of the adversarial review of the hot-lead notification path, each against the real broker and a
real HTTP receiver on loopback: how the notifier reads a receiver's answers (Retry-After, a 2xx whose body
is slow, a redirect, Slack's error codes), what lead data does to a Slack message, and what its errors
and logs show of a target's URL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from agents.notifications import Notifier
from sinks.webhook import IDEMPOTENCY_HEADER, RetryPolicy, WebhookTarget
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from streams.web import bound_port
from tests.integration.test_webhooks import (
    SECRET,
    committed_total,
    dead_letters,
    hot_lead,
    publish,
    start,
    wait_until,
)

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Receiver:
    """One loopback HTTP server; each test routes paths to handlers. ``attempts`` counts requests per
    path and idempotency key, ``bodies`` keeps what each path received."""

    def __init__(self) -> None:
        self.url = ""
        self.app = web.Application()
        self.attempts: Counter[str] = Counter()
        self.bodies: dict[str, list[bytes]] = {}

    def route(self, path: str, handle: Handler) -> None:
        async def counted(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.attempts[f"{path}|{request.headers.get(IDEMPOTENCY_HEADER, '')}"] += 1
            self.bodies.setdefault(path, []).append(body)
            return await handle(request)

        self.app.router.add_post(f"/{path}", counted)


@pytest.fixture
def hot_settings(
    broker: EmbeddedBroker, fresh_prefix: str, make_settings: Callable[..., Settings]
) -> Settings:
    return make_settings(kafka_bootstrap=broker.bootstrap, topic_prefix=fresh_prefix, webhook_secret=SECRET)


@pytest.fixture
async def http() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[Receiver]]]:
    runners: list[web.AppRunner] = []

    async def serve(routes: dict[str, Handler]) -> Receiver:
        receiver = Receiver()
        for path, handle in routes.items():
            receiver.route(path, handle)
        runner = web.AppRunner(receiver.app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        receiver.url = f"http://127.0.0.1:{bound_port(runner)}"
        return receiver

    try:
        yield serve
    finally:
        for runner in runners:
            await runner.cleanup()


async def run_until_settled(notifier: Notifier, settled: Callable[[], bool], what: str) -> None:
    stop, task = await start(notifier)
    try:
        await wait_until(settled, 30, what)
        await wait_until(lambda: notifier.pending.in_flight == 0, 15, "every lane settled")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_a_retry_after_of_zero_does_not_spend_every_attempt_at_once(
    hot_settings: Settings, http: Callable[[dict[str, Handler]], Awaitable[Receiver]]
) -> None:
    """A 503 or 429 with ``Retry-After: 0`` (or 1: Slack's rate limit, a load balancer in front of a
    deploying receiver) replaced the back-off, so all attempts went out within milliseconds and the hot lead
    became a dead letter although the receiver was back 1.2 s later. Retry-After is now a floor: at least
    the back-off is waited."""
    first: list[float] = []

    async def deploying(request: web.Request) -> web.Response:
        first.append(first[0] if first else time.monotonic())
        if time.monotonic() - first[0] < 1.2:
            return web.Response(status=503, headers={"Retry-After": "0"})
        return web.Response(status=200)

    receiver = await http({"deploying": deploying})
    target = WebhookTarget("json-0", f"{receiver.url}/deploying")
    policy = RetryPolicy(max_attempts=6, base_s=0.2, cap_s=1.0, timeout_s=5.0)  # waits of 1.7-3.4 s in all
    notifier = Notifier(hot_settings, targets=[target], policy=policy, group_id="n-retry-after")
    await asyncio.to_thread(publish, hot_settings, [hot_lead(1)])
    await run_until_settled(notifier, lambda: bool(first), "the first attempt")
    assert await asyncio.to_thread(dead_letters, hot_settings) == []
    assert 2 <= receiver.attempts["deploying|hot-1"] <= 6
    assert await asyncio.to_thread(committed_total, hot_settings, "n-retry-after") == 1
