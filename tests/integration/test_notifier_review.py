"""Findings of the adversarial review of the hot-lead notification path, each against the real broker and a
real HTTP receiver on loopback: how the notifier reads a receiver's answers (Retry-After, a 2xx whose body
is slow, a redirect, Slack's error codes), what lead data does to a Slack message, and what its errors
and logs show of a target's URL."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from agents.notifications import Notifier
from sinks.webhook import IDEMPOTENCY_HEADER, SLACK_SECTION_MAX, RetryPolicy, WebhookTarget
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

FAST_FAIL = RetryPolicy(max_attempts=2, base_s=0.02, cap_s=0.05, timeout_s=5.0)
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


async def test_a_2xx_whose_body_is_slow_is_delivered_once_not_resent_and_dead_lettered(
    hot_settings: Settings, http: Callable[[dict[str, Handler]], Awaitable[Receiver]]
) -> None:
    """The sender read the whole answer before counting a 2xx: a receiver that answered 200 at once but
    sent its body slower than the attempt's timeout (a streaming proxy, a framework flushing late) got the
    notification on every attempt, and then it was dead-lettered as 'no answer'. A 2xx is taken at once."""

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        await response.write(b'{"ok":')
        try:
            await asyncio.sleep(3)
            await response.write(b"true}")
        except (ConnectionError, RuntimeError):
            pass  # the notifier hung up: it has what it needs
        return response

    receiver = await http({"slow": slow_body})
    target = WebhookTarget("json-0", f"{receiver.url}/slow")
    policy = RetryPolicy(max_attempts=3, base_s=0.05, cap_s=0.1, timeout_s=0.5)
    notifier = Notifier(hot_settings, targets=[target], policy=policy, group_id="n-slow-body")
    await asyncio.to_thread(publish, hot_settings, [hot_lead(2)])
    await run_until_settled(notifier, lambda: receiver.attempts["slow|hot-2"] > 0, "the first attempt")
    assert receiver.attempts["slow|hot-2"] == 1
    assert await asyncio.to_thread(dead_letters, hot_settings) == []
    assert await asyncio.to_thread(committed_total, hot_settings, "n-slow-body") == 1


async def test_a_refusal_says_where_a_redirect_points_and_slacks_error_code(
    hot_settings: Settings, http: Callable[[dict[str, Handler]], Awaitable[Receiver]]
) -> None:
    """On call, a dead letter said only 'HTTP 301' or 'HTTP 400 (permanent: not retried)': whether the
    endpoint moved (and where) or Slack refused the message (``invalid_blocks``, ``channel_not_found``) took
    a look at the receiver's side. The refusal's host or error code is now in the dead letter; a path of the
    redirect (it may hold a token) and any other body are not."""

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "https://hooks.example.net/new/TOKEN55"})

    async def archived(request: web.Request) -> web.Response:
        return web.Response(status=410, text="channel_is_archived")

    async def chatty(request: web.Request) -> web.Response:
        return web.Response(status=400, text=f"bad request from {request.remote}: lead1@acme.io")

    receiver = await http({"moved": moved, "archived": archived, "chatty": chatty})
    targets = [
        WebhookTarget("json-0", f"{receiver.url}/moved"),
        WebhookTarget("slack-0", f"{receiver.url}/archived", "slack"),
        WebhookTarget("json-1", f"{receiver.url}/chatty"),
    ]
    notifier = Notifier(hot_settings, targets=targets, policy=FAST_FAIL, group_id="n-refusals")
    await asyncio.to_thread(publish, hot_settings, [hot_lead(3)])
    await run_until_settled(notifier, lambda: len(receiver.attempts) == 3, "an attempt per target")
    errors = sorted(letter["error"] for letter in await asyncio.to_thread(dead_letters, hot_settings))
    assert len(errors) == 3, errors
    assert "json-0" in errors[0] and "HTTP 301 (redirect to hooks.example.net" in errors[0]
    assert "TOKEN55" not in errors[0]
    assert "json-1" in errors[1] and "HTTP 400 (permanent" in errors[1] and "acme.io" not in errors[1]
    assert "slack-0" in errors[2] and "HTTP 410 channel_is_archived (permanent" in errors[2]


async def test_a_url_aiohttp_rewrites_does_not_put_its_token_in_the_dead_letter_or_the_log(
    hot_settings: Settings,
    http: Callable[[dict[str, Handler]], Awaitable[Receiver]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The token was hidden by replacing the configured URL in the error, but aiohttp's error for a URL it
    refuses shows the URL as it rewrote it (a space as ``%20``): the token went into the notifier's log and
    the dead letter's ``error``, which every ``dlq list`` user reads."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(status=200)

    receiver = await http({"ok": ok})
    targets = [
        WebhookTarget("json-0", "ftp://hooks.example.com/services/T0 SECRET77"),
        WebhookTarget("json-1", f"{receiver.url}/ok"),
    ]
    notifier = Notifier(hot_settings, targets=targets, policy=FAST_FAIL, group_id="n-url-token")
    await asyncio.to_thread(publish, hot_settings, [hot_lead(4)])
    with caplog.at_level(logging.INFO):
        await run_until_settled(notifier, lambda: receiver.attempts["ok|hot-4"] == 1, "the good target")
    letters = await asyncio.to_thread(dead_letters, hot_settings)
    assert len(letters) == 1
    assert "<json-0 at hooks.example.com>" in letters[0]["error"]
    assert "SECRET77" not in letters[0]["error"]
    assert "SECRET77" not in caplog.text


async def test_odd_lead_values_keep_the_slack_message_on_its_lines_and_the_follow_up_time_in_it(
    hot_settings: Settings, http: Callable[[dict[str, Handler]], Awaitable[Receiver]]
) -> None:
    """Lead values come from forms and the public tracker. A line break in a company name started a line of
    its own in the rep's message (here a fake deadline), a right-to-left override reversed what followed,
    and the 300-character limit of a value counted before escaping: three profile values of ``&``, ``<``
    or ``>`` grew to 3,900 characters, and clipping the section to Slack's 3,000 cut off the real
    follow-up time."""

    async def slack(request: web.Request) -> web.Response:
        return web.Response(status=200, text="ok")

    receiver = await http({"slack": slack})
    target = WebhookTarget("slack-0", f"{receiver.url}/slack", "slack")
    notifier = Notifier(hot_settings, targets=[target], policy=FAST_FAIL, group_id="n-slack-odd")
    record = dict(
        hot_lead(5),
        company_name="Acme\n*Follow up before:* next year\r\x00\u202eevil",
        job_title="&" * 400,
        industry="<" * 400,
        country=">" * 400,
        became_hot_at=1_750_000_000_000,
        sla_due_at=1_750_003_600_000,
        owner="rep-7",
    )
    await asyncio.to_thread(publish, hot_settings, [record])
    await run_until_settled(notifier, lambda: bool(receiver.bodies.get("slack")), "the Slack message")
    message = json.loads(receiver.bodies["slack"][0])
    headline, details = (block["text"]["text"] for block in message["blocks"])
    assert all(len(text) <= SLACK_SECTION_MAX for text in (message["text"], headline, details))
    assert "Acme *Follow up before:* next year" in headline
    assert not re.search("[\\x00-\\x1f\\u202e]", headline + message["text"])
    due = "<!date^1750003600^{date_short_pretty} {time}|2025-06-15T16:06:40Z>"
    assert f"*Follow up before:* {due} (1 h clock, owner rep-7)" in details
    assert not re.search("&(?!amp;|lt;|gt;)", details)  # no entity cut in two


async def test_every_5xx_is_retried_as_documented_not_only_500_to_504(
    hot_settings: Settings, http: Callable[[dict[str, Handler]], Awaitable[Receiver]]
) -> None:
    """docs/ingestion.md: '5xx are retried'. Only 500, 502, 503 and 504 were: a receiver behind Cloudflare
    answers 521 (origin down) or 522/524 (origin timed out) while it restarts for a deploy, and each hot
    lead in that window became a dead letter on its first attempt."""
    answers = [521, 522, 200]

    async def behind_cdn(request: web.Request) -> web.Response:
        return web.Response(status=answers.pop(0) if len(answers) > 1 else answers[0])

    receiver = await http({"cdn": behind_cdn})
    target = WebhookTarget("json-0", f"{receiver.url}/cdn")
    policy = RetryPolicy(max_attempts=4, base_s=0.02, cap_s=0.05, timeout_s=5.0)
    notifier = Notifier(hot_settings, targets=[target], policy=policy, group_id="n-5xx")
    await asyncio.to_thread(publish, hot_settings, [hot_lead(6)])
    await run_until_settled(notifier, lambda: receiver.attempts["cdn|hot-6"] > 0, "the first attempt")
    assert receiver.attempts["cdn|hot-6"] == 3
    assert await asyncio.to_thread(dead_letters, hot_settings) == []
    assert await asyncio.to_thread(committed_total, hot_settings, "n-5xx") == 1


async def test_a_space_pasted_after_a_configured_url_does_not_dead_letter_every_hot_lead(
    hot_settings: Settings,
    http: Callable[[dict[str, Handler]], Awaitable[Receiver]],
    make_settings: Callable[..., Settings],
) -> None:
    """A URL copied into a Secret with a space after it passed the settings' check and was sent as
    ``/hook%20``: the receiver answered 404 (Slack: ``no_service``), a permanent failure, so every hot lead
    was a dead letter at once. The notifier reads its targets from the settings here, as in production."""

    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=200)

    receiver = await http({"hook": hook})
    settings = make_settings(  # through the settings' own validation, which lets the spaces through
        kafka_bootstrap=hot_settings.kafka_bootstrap,
        topic_prefix=hot_settings.topic_prefix,
        webhook_secret=SECRET,
        webhook_urls=[f"{receiver.url}/hook "],
        slack_webhook_urls=[f" {receiver.url}/hook\t"],
    )
    notifier = Notifier(settings, policy=FAST_FAIL, group_id="n-url-space")
    await asyncio.to_thread(publish, settings, [hot_lead(7)])
    await run_until_settled(notifier, lambda: receiver.attempts["hook|hot-7"] == 2, "both targets")
    assert await asyncio.to_thread(dead_letters, settings) == []
