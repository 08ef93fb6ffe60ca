"""Signed webhook delivery of hot-lead notifications: generic JSON or a Slack-compatible body.

This module is the HTTP delivery and its retry policy; its parts live beside it, one job each:
``sinks.webhook_signing`` (the signature and idempotency headers, and ``verify_signature`` for receivers),
``sinks.webhook_bodies`` (the JSON and Slack bodies) and ``sinks.webhook_targets`` (the endpoints from the
settings). Their public names are imported here too, so ``from sinks.webhook import verify_signature`` (the
docs' receiver snippet) and the notifier's imports keep working.

Retries: network errors, timeouts, 408/425/429 and 5xx are retried with exponential backoff and jitter
(``Retry-After``, seconds or a date, waited as a floor under the backoff, up to the cap); other answers are
permanent, and so are a URL aiohttp refuses and a request it cannot send. A delivery that gives up is
returned as failed, and the notifier turns it into a dead letter: nothing is dropped silently. So is a body
that cannot be rendered (``rendered=False``): the exception was raised out of ``deliver``, and the
notifier's lane stuck on the notification for good.

Stopping: a sender given the process's ``stop`` event makes no new attempt once it is set and leaves a retry
backoff as soon as it is set, raising ``Stopping``: the notification is neither delivered nor given up, so
the notifier neither dead-letters it nor commits its offset, and the next process delivers it. (Before, the
notifier's stop waited out the backoff of a dead receiver: ~10 s per SIGTERM.)
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

# re-exported (``X as X``): receivers, the notifier and tests import these from sinks.webhook
from sinks.webhook_bodies import SLACK_FIELD_MAX as SLACK_FIELD_MAX
from sinks.webhook_bodies import SLACK_SECTION_MAX as SLACK_SECTION_MAX
from sinks.webhook_bodies import json_body as json_body
from sinks.webhook_bodies import render as render
from sinks.webhook_bodies import slack_body as slack_body
from sinks.webhook_bodies import slack_text as slack_text
from sinks.webhook_signing import IDEMPOTENCY_HEADER as IDEMPOTENCY_HEADER
from sinks.webhook_signing import MIN_WEBHOOK_SECRET as MIN_WEBHOOK_SECRET
from sinks.webhook_signing import SIGNATURE_HEADER as SIGNATURE_HEADER
from sinks.webhook_signing import idempotency_key as idempotency_key
from sinks.webhook_signing import sign as sign
from sinks.webhook_signing import signature_header as signature_header
from sinks.webhook_signing import verify_signature as verify_signature
from sinks.webhook_targets import TargetKind as TargetKind
from sinks.webhook_targets import WebhookTarget as WebhookTarget
from sinks.webhook_targets import targets_from_settings as targets_from_settings
from sinks.webhook_targets import without_url as without_url
from streams.backoff import backoff_seconds
from streams.metrics import Metrics
from streams.settings import Settings
from streams.stoppable import finished_before_stop

ANSWER_READ = 256  # bytes of a refusal's body read, for its error code
#: Retried besides every 5xx. Why every 5xx: only 500/502/503/504 were, so a receiver behind Cloudflare
#: answering 520-524 while it restarted (origin down or slow) had each hot lead dead-lettered at once.
RETRYABLE_STATUS = frozenset({408, 425, 429})


_SETTING_DEFAULTS = Settings.model_fields  # one declaration of the retry defaults: streams/settings.py


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, per-attempt timeout and backoff; ``delay`` is exponential with "equal jitter"."""

    # the defaults are the LEADPULSE_WEBHOOK_* settings' (12 attempts ride out a 1.5-3 min receiver outage)
    max_attempts: int = _SETTING_DEFAULTS["webhook_max_attempts"].default
    base_s: float = _SETTING_DEFAULTS["webhook_backoff_base_s"].default
    cap_s: float = _SETTING_DEFAULTS["webhook_backoff_cap_s"].default
    timeout_s: float = _SETTING_DEFAULTS["webhook_timeout_s"].default

    def delay(self, attempt: int, rnd: random.Random, retry_after_s: float | None = None) -> float:
        """Wait before attempt ``attempt + 1`` (attempt counts from 1): half fixed, half random; at least
        ``retry_after_s``, at most the cap.

        Why at least the back-off too: a ``Retry-After`` of 0 or 1 (Slack's rate limit, a load balancer in
        front of a deploying receiver) replaced it, so the attempts were spent in seconds instead of the
        1.5-3 min they are meant to ride out, and the hot lead became a dead letter."""
        ceiling = backoff_seconds(attempt, self.base_s, self.cap_s)
        backoff = ceiling / 2 + rnd.uniform(0, ceiling / 2)
        return backoff if retry_after_s is None else min(self.cap_s, max(backoff, retry_after_s))


def policy_from_settings(settings: Settings) -> RetryPolicy:
    """The policy of ``LEADPULSE_WEBHOOK_MAX_ATTEMPTS``, ``_TIMEOUT_S``, ``_BACKOFF_BASE_S``, ``_CAP_S``."""
    return RetryPolicy(
        max_attempts=settings.webhook_max_attempts,
        base_s=settings.webhook_backoff_base_s,
        cap_s=settings.webhook_backoff_cap_s,
        timeout_s=settings.webhook_timeout_s,
    )


@dataclass(frozen=True)
class DeliveryResult:
    target: WebhookTarget
    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None
    rendered: bool = True  # False: the body could not be rendered, nothing was sent

    def describe(self) -> str:
        prefix = f"webhook target {self.target.name} ({self.target.host}): "
        if self.ok:
            return prefix + f"delivered after {self.attempts} attempt(s)"
        if not self.rendered:
            return prefix + f"{self.error} (permanent: not sent)"
        return prefix + f"gave up after {self.attempts} attempt(s): {self.error}"


class Stopping(Exception):
    """The process is stopping: the notification was neither delivered nor given up (no dead letter, no
    commit); it is delivered after a restart, and a receiver drops a copy it had by the idempotency key."""


def _retry_after(headers: Any) -> float | None:
    """Retry-After in seconds, a number or an HTTP date (RFC 9110); None when absent or unreadable."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        seconds = float(str(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(str(value))
        except (TypeError, ValueError):
            return None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


async def _refusal(response: aiohttp.ClientResponse) -> str:
    """What an answer other than 2xx says, for the dead letter: where a redirect points (its host only: a
    path may hold a token), or a Slack-style error code (``invalid_blocks``, ``channel_not_found``). Other
    bodies are not shown (one may echo the lead back into the log).

    Why at most ``ANSWER_READ`` bytes, and no body of a 2xx at all: the whole body was read, so a 2xx whose
    body was slower than the attempt's timeout counted as a failure, was sent again on every attempt and
    then dead-lettered although the receiver had taken it each time, and an endless body filled memory."""
    if 300 <= response.status < 400:
        try:
            host = urlsplit(response.headers.get("Location") or "").hostname
        except ValueError:
            host = None
        return f" (redirect to {host or 'another path'}: configure the final URL)"
    try:
        text = (await response.content.read(ANSWER_READ)).decode("ascii", "replace").strip()
    except (TimeoutError, aiohttp.ClientError):
        return ""
    return f" {text}" if re.fullmatch(r"[a-z][a-z0-9_]{1,63}", text) else ""


class WebhookSender:
    """Delivers one notification to one target with retries. Safe to share between concurrent tasks."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        secret: str | bytes | None,
        *,
        policy: RetryPolicy | None = None,
        metrics: Metrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rnd: random.Random | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.session = session
        self.stop = stop
        self.secret = secret
        self.policy = policy or RetryPolicy()
        self.metrics = metrics
        self.sleep = sleep
        self.rnd = rnd or random.Random()

    def headers(self, body: bytes, notification_id: str) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "leadpulse-webhook/1",
            IDEMPOTENCY_HEADER: idempotency_key(notification_id),
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = signature_header(self.secret, body)
        return headers

    async def _pause(self, delay_s: float) -> None:
        """The backoff before the next attempt; raises ``Stopping`` as soon as ``stop`` is set."""
        if self.stop is None:
            await self.sleep(delay_s)
            return
        if self.stop.is_set():
            raise Stopping
        # a backoff that ended as the stop came is a stop too: no attempt starts once it is set
        if not await finished_before_stop(self.sleep(delay_s), self.stop) or self.stop.is_set():
            raise Stopping

    async def deliver(
        self, target: WebhookTarget, hot: dict[str, Any], withdrawn: Callable[[], bool] | None = None
    ) -> DeliveryResult:
        """Raises ``Stopping`` (no result) when ``stop`` is set before an attempt or during a backoff; an
        attempt already under way is finished (bounded by the policy's timeout) and its answer counts. A body
        that cannot be rendered is a failed result with ``rendered=False`` (retrying cannot help). When
        ``withdrawn()`` is true before a retry (the lead was erased meanwhile), no further attempt is made:
        a failed result."""
        key = str(hot["notification_id"])
        try:
            body = render(target, hot)
        except Exception as exc:  # a value the body cannot show (a time past year 9999), a rendering bug
            if self.metrics:
                self.metrics.webhook_failures.labels(target=target.name).inc()
            error = f"body not rendered: {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
            return DeliveryResult(target, False, 0, None, error, rendered=False)
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
        status: int | None = None
        error = "no attempt made"
        for attempt in range(1, self.policy.max_attempts + 1):
            if self.stop is not None and self.stop.is_set():
                raise Stopping
            if attempt > 1:
                if withdrawn is not None and withdrawn():
                    error += "; withdrawn before a retry"
                    return DeliveryResult(target, False, attempt - 1, status, error)
                if self.metrics:  # counted as it is made: one withdrawn, or cut by a stop, is not a retry
                    self.metrics.webhook_retries.labels(target=target.name).inc()
            retry_after: float | None = None
            try:
                async with self.session.post(
                    target.url,
                    data=body,
                    headers=self.headers(body, key),
                    timeout=timeout,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    if 200 <= status < 300:  # taken: its body is not waited for (_refusal says why)
                        if self.metrics:
                            self.metrics.webhook_deliveries.labels(target=target.name).inc()
                        return DeliveryResult(target, True, attempt, status)
                    error = f"HTTP {status}{await _refusal(response)}"
                    retry_after = _retry_after(response.headers)
                    if status < 500 and status not in RETRYABLE_STATUS:
                        error += " (permanent: not retried)"
                        break
            except (TimeoutError, aiohttp.ClientError) as exc:
                status = None
                permanent = isinstance(exc, aiohttp.InvalidURL)  # NonHttpUrlClientError too
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if isinstance(exc, aiohttp.InvalidURL):  # its message is the URL as aiohttp rewrote it
                    error = f"{type(exc).__name__}: {target}" + (
                        f" - {exc.description}" if exc.description else ""
                    )
                error = without_url(error, target)
                if isinstance(exc, TimeoutError):
                    error = f"no answer within {self.policy.timeout_s:g} s"
                if permanent:  # a URL aiohttp refuses is refused on every attempt
                    error += " (permanent: not retried)"
                    break
            except Exception as exc:  # e.g. aiohttp refusing a header: retrying cannot help
                # Permanent, so it becomes a dead letter. Unhandled, it left the notification neither
                # delivered nor given up, and its partition's offsets were never committed again.
                status = None
                error = without_url(f"request not sent: {type(exc).__name__}: {exc}", target)
                error += " (permanent: not retried)"
                break
            if attempt < self.policy.max_attempts:
                await self._pause(self.policy.delay(attempt, self.rnd, retry_after))
        if self.metrics:
            self.metrics.webhook_failures.labels(target=target.name).inc()
        return DeliveryResult(target, False, attempt, status, error)
