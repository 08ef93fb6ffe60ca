"""Findings of the receiver-side webhook audit: what a Slack channel and a receiver's HTTP stack get for a
lead whose values come from the public tracker, and a short signing secret."""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web

from agents.notifications import Notifier
from sinks.webhook import (
    IDEMPOTENCY_HEADER,
    SLACK_SECTION_MAX,
    RetryPolicy,
    WebhookSender,
    WebhookTarget,
    idempotency_key,
    policy_from_settings,
    slack_body,
)
from streams.settings import load_settings
from streams.web import bound_port

pytestmark = pytest.mark.unit

NOW_MS = 1_750_000_000_000


def hot(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "lead_id": "L-1",
        "notification_id": "L-1:hot:1",
        "score": 120.0,
        "fit": 40.0,
        "behaviour": 80.0,
        "reason": "score_threshold",
        "became_hot_at": NOW_MS,
        "sla_due_at": NOW_MS + 3_600_000,
        "owner": "rep-7",
        "email": "ada@acme.io",
        "company_name": "Acme",
        "job_title": "CTO",
        "signals": [
            {
                "rule": "pricing_page",
                "event_type": "web_visit",
                "event_id": f"e{i}",
                "event_time": NOW_MS,
                "points": 30.0,
                "current_points": 30.0 - i,
                "detail": "https://acme.io/pricing",
            }
            for i in range(5)
        ],
    }
    base.update(fields)
    return base


def slack_texts(body: bytes) -> list[str]:
    message = json.loads(body)
    return [message["text"], *(block["text"]["text"] for block in message["blocks"])]


def test_slack_message_escapes_lead_values_so_a_form_cannot_ping_the_channel_or_plant_links() -> None:
    """Slack mrkdwn reads ``<!channel>`` as @channel and ``<url|label>`` as a link; ``&``, ``<`` and ``>``
    in text must be escaped (Slack's "Escaping text"). Company and job title come from a public form."""
    body = slack_body(
        hot(
            company_name="Müller & Söhne <!channel>",
            job_title="<https://evil.example/login|Open in CRM>",
            owner="<@U123>",
        )
    )
    for text in slack_texts(body):
        # the only markup is leadpulse's own date token, which carries no lead value
        text = re.sub(r"<!date\^\d+\^\{date_short_pretty\} \{time\}\|[0-9T:Z-]+>", "", text)
        assert "<" not in text and ">" not in text, text
    details = slack_texts(body)[2]
    assert "Müller &amp; Söhne &lt;!channel&gt;" in slack_texts(body)[1]
    assert "&lt;https://evil.example/login|Open in CRM&gt;" in details
    assert "(1 h clock, owner &lt;@U123&gt;)" in details


def test_slack_message_stays_within_slacks_3000_character_section_limit_for_very_long_values() -> None:
    """Slack answers 400 ``invalid_blocks`` to a section text over 3,000 characters: a permanent failure,
    so the lead became a dead letter instead of a message. The SLA due time must survive the clipping."""
    long_signals = [dict(s, detail="https://acme.io/?" + "q" * 5000) for s in hot()["signals"]]
    body = slack_body(
        hot(company_name="X" * 5000, job_title="Y&" * 3000, industry="Z" * 3000, signals=long_signals)
    )
    texts = slack_texts(body)
    assert all(len(t) <= SLACK_SECTION_MAX for t in texts), [len(t) for t in texts]
    due = "<!date^1750003600^{date_short_pretty} {time}|2025-06-15T16:06:40Z>"
    assert f"*Follow up before:* {due} (1 h clock, owner rep-7)" in texts[2]
    assert "*Profile:*" in texts[2]


@pytest.mark.parametrize(
    "notification_id",
    ["L-1\r\nX-Evil: 1:hot:1", "L-ünï-中文:hot:2", "L-100%:hot:1", "L-\x00\t:hot:3"],
)
def test_idempotency_header_is_header_safe_and_decodes_back_to_the_notification_id(
    notification_id: str,
) -> None:
    key = idempotency_key(notification_id)
    assert key.isascii() and key.isprintable()
    assert unquote(key) == notification_id


def test_idempotency_header_of_a_printable_ascii_id_is_the_id_itself() -> None:
    assert idempotency_key("L-42:hot:3") == "L-42:hot:3"
    assert idempotency_key("anon a/b:hot:1") == "anon a/b:hot:1"


async def test_a_lead_id_with_a_line_break_is_delivered_not_left_unsettled() -> None:
    """aiohttp refuses a header value with CR/LF (ValueError). The sender let it escape: no retry, no
    dead letter, and the notifier never committed that partition again (its lag stuck, every later
    notification re-delivered after each restart)."""
    got: list[tuple[str | None, bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append((request.headers.get(IDEMPOTENCY_HEADER), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()

    notification_id = "L-1\r\nX-Evil: 1:hot:1"
    try:
        async with aiohttp.ClientSession() as session:
            sender = WebhookSender(session, "whsec_0123456789abcdef")
            target = WebhookTarget("json-0", f"http://127.0.0.1:{bound_port(runner)}/hook")
            result = await sender.deliver(
                target, hot(lead_id="L-1\r\nX-Evil: 1", notification_id=notification_id)
            )
    finally:
        await runner.cleanup()
    assert result.ok, result.describe()
    [(header, body)] = got
    assert header is not None and unquote(header) == notification_id
    assert json.loads(body)["notification_id"] == notification_id


async def test_an_unexpected_error_sending_a_request_is_a_permanent_failure_not_an_escape() -> None:
    """Whatever the HTTP client raises, the delivery ends with a result (the notifier dead-letters it)."""

    class Refusing:
        def post(self, *args: Any, **kwargs: Any) -> Any:
            raise ValueError("Forbidden control character detected in headers")

    sender = WebhookSender(Refusing(), "whsec_0123456789abcdef")  # type: ignore[arg-type]
    result = await sender.deliver(WebhookTarget("json-0", "https://crm.example.com/t0k3n"), hot())
    assert not result.ok and result.attempts == 1
    assert result.error is not None and "permanent" in result.error and "ValueError" in result.error
    assert "t0k3n" not in result.describe()


def test_a_short_webhook_secret_is_warned_about_at_start_naming_the_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A secret guessable offline from one captured request is logged at start; not refused, since the
    receivers already verify with it and a notifier stopped on upgrade would deliver no hot lead at all."""
    targets = [WebhookTarget("json-0", "https://crm.example.com/hook")]
    with caplog.at_level(logging.WARNING, logger="agents.notifications"):
        assert Notifier(load_settings(webhook_secret="x"), targets=targets).targets == targets
    warned = [r.getMessage() for r in caplog.records if "LEADPULSE_WEBHOOK_SECRET is short" in r.getMessage()]
    assert warned == [
        "LEADPULSE_WEBHOOK_SECRET is short (1 characters): use at least 16 random characters, e.g. "
        "`openssl rand -hex 32`, and give the new one to the receivers"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agents.notifications"):
        Notifier(load_settings(webhook_secret="0123456789abcdef"), targets=targets)
    assert not [r for r in caplog.records if "is short" in r.getMessage()]


def test_the_default_retries_ride_out_a_receiver_deploy_of_a_minute_and_a_half() -> None:
    """6 attempts gave up after 8-16 s: every notification during a receiver's deploy became a dead letter."""
    import random

    policy = policy_from_settings(load_settings())

    class Edge(random.Random):
        def __init__(self, at: float) -> None:
            super().__init__()
            self.at = at

        def uniform(self, a: float, b: float) -> float:
            return a + (b - a) * self.at

    waits = [
        sum(policy.delay(attempt, Edge(at)) for attempt in range(1, policy.max_attempts)) for at in (0.0, 1.0)
    ]
    # backoffs 0.5, 1, 2, 4, 8, 16, then 30 s capped, for 11 waits: 181.5 s at most, half of it at least
    assert waits == [pytest.approx(90.75), pytest.approx(181.5)]
    assert RetryPolicy().max_attempts == policy.max_attempts  # the class default is the setting's
