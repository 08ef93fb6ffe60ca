"""Signing and idempotency headers of a webhook request: the sender's and the receiver's side of them.

Signature (documented in ``docs/ingestion.md``; the scheme Stripe and others use, so receivers know it):

    X-Leadpulse-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
    X-Leadpulse-Idempotency-Key: <notification_id>

The timestamp is inside the MAC so a captured request cannot be replayed later (receivers reject ``t``
older than a tolerance); it is fresh on each attempt. The idempotency key is the notification id, stable
across retries and pipeline replays, so a receiver that stores the keys it has seen shows each lead once.
The sender signs with one secret; ``verify_signature`` accepts any matching ``v1=`` value, so receivers
written against it keep working if a later version signs with the old and new secret during a rotation.

Its own module, with no HTTP client in it, because receivers import ``verify_signature`` (through
``sinks.webhook``, as the docs show) and its tests need nothing but bytes and a clock.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

SIGNATURE_HEADER = "X-Leadpulse-Signature"
IDEMPOTENCY_HEADER = "X-Leadpulse-Idempotency-Key"
#: Shortest ``LEADPULSE_WEBHOOK_SECRET`` the notifier starts with without a warning (as
#: ``LEADPULSE_EMAIL_HASH_KEY``): a short HMAC key can be guessed offline from one captured request, and then
#: anyone can forge hot leads.
MIN_WEBHOOK_SECRET = 16
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


def idempotency_key(notification_id: str) -> str:
    """The ``X-Leadpulse-Idempotency-Key`` value: ``notification_id`` with every character other than
    printable ASCII (and ``%``) percent-encoded as UTF-8, so ``urllib.parse.unquote`` gives the id back.

    Why: the id carries the lead id, which a tracker may send with any character. A CR or LF made aiohttp
    refuse the request (header injection), an exception no retry or dead letter handled: the notification
    was never delivered and its partition's offset never committed again. Non-ASCII went out as raw UTF-8,
    which HTTP does not define (most servers read it as Latin-1). Ids of printable ASCII are unchanged."""
    return quote(notification_id, safe=_HEADER_SAFE)
