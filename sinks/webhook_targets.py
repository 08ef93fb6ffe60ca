"""The notifier's webhook endpoints: which URLs get which body, and how a URL is kept out of logs.

Its own module because the notifier's lanes and the body rendering need a target without the HTTP
sender, and because the rule that a URL is never shown (its path may be a token) has one home.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import yarl

from streams.settings import Settings

TargetKind = Literal["json", "slack"]


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
