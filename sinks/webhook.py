"""Signed webhook delivery of hot-lead notifications: generic JSON or a Slack-compatible body.

Signature (documented in ``docs/ingestion.md``; the scheme Stripe and others use, so receivers know it):

    X-Leadpulse-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
    X-Leadpulse-Idempotency-Key: <notification_id>

The timestamp is inside the MAC so a captured request cannot be replayed later (receivers reject ``t``
older than a tolerance); it is fresh on each attempt. The idempotency key is the notification id, stable
across retries and pipeline replays, so a receiver that stores the keys it has seen shows each lead once.
The sender signs with one secret; ``verify_signature`` accepts any matching ``v1=`` value, so receivers
written against it keep working if a later version signs with the old and new secret during a rotation.

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
import contextlib
import hashlib
import hmac
import json
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import aiohttp
import yarl

from streams.backoff import backoff_seconds
from streams.metrics import Metrics
from streams.settings import Settings
from streams.stoppable import finished_before_stop

SIGNATURE_HEADER = "X-Leadpulse-Signature"
IDEMPOTENCY_HEADER = "X-Leadpulse-Idempotency-Key"
ANSWER_READ = 256  # bytes of a refusal's body read, for its error code
#: Retried besides every 5xx. Why every 5xx: only 500/502/503/504 were, so a receiver behind Cloudflare
#: answering 520-524 while it restarted (origin down or slow) had each hot lead dead-lettered at once.
RETRYABLE_STATUS = frozenset({408, 425, 429})
TargetKind = Literal["json", "slack"]
#: Shortest ``LEADPULSE_WEBHOOK_SECRET`` the notifier starts with without a warning (as
#: ``LEADPULSE_EMAIL_HASH_KEY``): a short HMAC key can be guessed offline from one captured request, and then
#: anyone can forge hot leads.
MIN_WEBHOOK_SECRET = 16
#: Slack refuses a message whose section text exceeds 3,000 characters (``invalid_blocks``, HTTP 400:
#: a permanent failure, so the rep never saw the lead); the fallback ``text`` is kept as short.
SLACK_SECTION_MAX = 3000
SLACK_FIELD_MAX = 300  # one profile value or signal detail in a Slack message
#: Printable ASCII except ``%``: the characters an idempotency key keeps as they are in its header.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%") + " "


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    return hmac.new(_secret_bytes(secret), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={sign(secret, ts, body)}"


def verify_signature(
    secret: str | bytes, header: str | None, body: bytes, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """Receiver side: True when ``header`` carries a valid MAC of ``body`` made within ``tolerance_s``.

    Pass the raw request body exactly as received (parsing and re-serialising JSON changes the bytes).
    """
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode()
    # bytes: compare_digest raises TypeError for a str with a non-ASCII character, which anyone can send
    return any(hmac.compare_digest(expected, c.encode("utf-8", "replace")) for c in candidates)


@dataclass(frozen=True)
class WebhookTarget:
    """One endpoint. Logs and metrics show ``name`` (``json-0``, ``slack-1``): URLs may hold tokens."""

    name: str
    url: str
    kind: TargetKind = "json"

    def __str__(self) -> str:
        return f"<{self.name} at {self.host}>"

    @property
    def host(self) -> str:
        """The URL's host name, or ``?``. Never raises: it is read while describing a failure, and a URL
        ``urlsplit`` refuses (``http://[::1/x``) raised out of the sender there, sticking the lane."""
        try:
            return urlsplit(self.url).hostname or "?"
        except ValueError:
            return "?"


def without_url(text: str, target: WebhookTarget) -> str:
    """``text`` (an error, a log line) with ``target``'s URL, as configured or as aiohttp rewrites it,
    replaced by ``<name at host>``: the path of a Slack or CRM webhook URL is its token."""
    forms = {target.url}
    with contextlib.suppress(TypeError, ValueError):
        forms.add(str(yarl.URL(target.url)))
    for form in sorted(filter(None, forms), key=len, reverse=True):
        text = text.replace(form, str(target))
    return text


def targets_from_settings(settings: Settings) -> list[WebhookTarget]:
    """``LEADPULSE_WEBHOOK_URLS`` get the JSON body, ``LEADPULSE_SLACK_WEBHOOK_URLS`` the Slack one.

    URLs without surrounding whitespace: a space pasted after a URL into a Secret was sent as ``%20`` at
    the end of its path, the receiver (Slack: ``no_service``) answered 404, and every hot lead became a
    dead letter at its first attempt."""
    targets = [WebhookTarget(f"json-{i}", u.strip(), "json") for i, u in enumerate(settings.webhook_urls)]
    targets += [
        WebhookTarget(f"slack-{i}", u.strip(), "slack") for i, u in enumerate(settings.slack_webhook_urls)
    ]
    return targets


def idempotency_key(notification_id: str) -> str:
    """The ``X-Leadpulse-Idempotency-Key`` value: ``notification_id`` with every character other than
    printable ASCII (and ``%``) percent-encoded as UTF-8, so ``urllib.parse.unquote`` gives the id back.

    Why: the id carries the lead id, which a tracker may send with any character. A CR or LF made aiohttp
    refuse the request (header injection), an exception no retry or dead letter handled: the notification
    was never delivered and its partition's offset never committed again. Non-ASCII went out as raw UTF-8,
    which HTTP does not define (most servers read it as Latin-1). Ids of printable ASCII are unchanged."""
    return quote(notification_id, safe=_HEADER_SAFE)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def json_body(hot: dict[str, Any]) -> bytes:
    """The hot_lead record as JSON with ``type`` and ISO copies of its timestamps (epoch ms kept too)."""
    payload = {
        "type": "lead.hot",
        **hot,
        "became_hot_at_iso": _iso(hot.get("became_hot_at")),
        "sla_due_at_iso": _iso(hot.get("sla_due_at")),
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def _clip(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters; never ends inside an ``&amp;``-style entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    entity = cut.rfind("&")
    return (cut[:entity] if entity >= 0 and ";" not in cut[entity:] else cut) + "…"


#: Line breaks, other control characters and bidirectional overrides: shown as one space in Slack.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")


def slack_text(value: Any, limit: int = SLACK_FIELD_MAX) -> str:
    """A lead's value as literal Slack mrkdwn text on one line: ``&``, ``<``, ``>`` escaped (Slack's rule),
    control characters as a space, at most ``limit`` characters once escaped.

    Why: the profile comes from forms and the public tracker. Unescaped, a company name such as
    ``<!channel>`` notified the whole channel and ``<https://evil.example|Open in CRM>`` showed a link to
    anywhere in a message the reps trust. A line break in a company name started a line of its own in the
    message (a fake ``*Follow up before:*``), and the limit counted characters before escaping: four
    profile values of ``&`` or ``<`` filled the section, and the clipping cut off the follow-up time."""
    text = _UNPRINTABLE.sub(" ", str(value))
    return _clip(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"), limit)


def _why_hot(reason: str) -> str:
    """The record's reason in the words of the revenue model: a direct inquiry (catalog, inquiry, demo
    request: the short SLA) or a score over the MQL threshold; the rule id stays for the rules file."""
    if reason.startswith("immediate_mql:"):
        return f"direct inquiry ({reason.removeprefix('immediate_mql:')})"
    return "score over the MQL threshold" if reason == "score_threshold" else reason


def _slack_date(ms: int, iso: str) -> str:
    """A time Slack shows in each reader's own time zone (``<!date^…>``), with the UTC ISO time as the
    fallback text for clients that cannot: a rep in Tokyo read a UTC deadline nine hours off."""
    return f"<!date^{ms // 1000}^{{date_short_pretty}} {{time}}|{iso}>"


def _clock(hot: dict[str, Any]) -> str:
    """``"1 h clock, "``: how long the rep has from the moment the lead became hot (1 h for a direct
    inquiry, 24 h by default, a segment's own), so the deadline's urgency is read at a glance."""
    due, start = hot.get("sla_due_at"), hot.get("became_hot_at")
    if not isinstance(due, int) or not isinstance(start, int) or due <= start:
        return ""
    minutes = (due - start) / 60_000
    return f"{minutes / 60:g} h clock, " if minutes >= 60 else f"{minutes:.0f} min clock, "


def slack_body(hot: dict[str, Any], top: int = 5) -> bytes:
    """Incoming-webhook message: who, why (top signals), profile and the SLA due time. Every value from
    the lead is escaped and clipped (``slack_text``) and each section kept within Slack's 3,000 characters;
    the JSON body carries the full values.

    The score shows its fit and behaviour parts: the signals listed are behaviour only, so a score of 105
    next to signals worth 45 left a rep guessing where 60 came from (the profile). A lead with no owner says
    so: nobody's clock is running for it, and in the demo unassigned hot leads breached most."""
    who = slack_text(hot.get("email") or hot["lead_id"])
    company = slack_text(hot.get("company_name") or hot.get("company_domain") or "unknown company")
    parts = ""
    if isinstance(hot.get("fit"), int | float) and isinstance(hot.get("behaviour"), int | float):
        parts = f" (fit {hot['fit']:.0f} + behaviour {hot['behaviour']:.0f})"
    headline = (
        f":fire: Hot lead {who} ({company}), score {hot['score']:.0f}{parts}: "
        f"{slack_text(_why_hot(str(hot['reason'])))}"
    )
    signals = sorted(hot.get("signals") or [], key=lambda s: -abs(s.get("current_points", 0.0)))[:top]
    why = (
        "\n".join(
            f"• {slack_text(s['rule'])} ({slack_text(s['event_type'])}): {s['current_points']:+.0f}"
            + (f" — {slack_text(s['detail'])}" if s.get("detail") else "")
            for s in signals
        )
        or "• (no signals)"
    )
    profile = ", ".join(
        slack_text(v)
        for v in (
            hot.get("job_title"),
            hot.get("industry"),
            hot.get("country"),
            hot.get("company_size") and f"{hot['company_size']} employees",
        )
        if v
    )
    due = _iso(hot.get("sla_due_at"))
    lines = [f"*Why:*\n{why}"]
    if profile:
        lines.append(f"*Profile:* {profile}")
    owner = f"owner {slack_text(hot['owner'])}" if hot.get("owner") else "no owner assigned"
    if due:
        lines.append(f"*Follow up before:* {_slack_date(hot['sla_due_at'], due)} ({_clock(hot)}{owner})")
    elif not hot.get("owner"):
        lines.append("*Owner:* none assigned")
    # clipped on whole lines where possible: the SLA line matters more than the fifth signal's detail
    rest = "".join("\n" + line for line in lines[1:])
    details = _clip(_clip(lines[0], max(SLACK_SECTION_MAX - len(rest), 200)) + rest, SLACK_SECTION_MAX)
    headline = _clip(headline, SLACK_SECTION_MAX)
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        {"type": "section", "text": {"type": "mrkdwn", "text": details}},
    ]
    return json.dumps({"text": headline, "blocks": blocks}, separators=(",", ":")).encode()


def render(target: WebhookTarget, hot: dict[str, Any]) -> bytes:
    return slack_body(hot) if target.kind == "slack" else json_body(hot)


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
