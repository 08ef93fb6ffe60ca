"""A small HTTP client for the collector: buffers events and posts them in batches (``POST /v1/events``).

Used by ``leadpulse demo --via collector``, so synthetic traffic can enter the pipeline the way
a web site or CRM integration would. Server-side types (``sales_activity``) and profiles that set CRM fields
go with the server write key.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from streams.backoff import backoff_seconds
from streams.intake import CRM_PROFILE_FIELDS, SERVER_TYPES

STAMPED_BY_COLLECTOR = ("source", "received_at")


def _server_side(schema: str, record: dict[str, Any]) -> bool:
    """Sales activities, and profiles that set CRM fields (flags, owner, segment), need the server key."""
    if schema in SERVER_TYPES:
        return True
    crm_fields = (record.get(name) for name in CRM_PROFILE_FIELDS)
    return schema == "lead_identified" and any(value not in (None, "", []) for value in crm_fields)


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date (RFC 9110; a proxy in front of the collector may
    send one, and float() of it raised out of the client); None when absent or unreadable (back off)."""
    if not retry_after:
        return None
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" in the date: UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class CollectorRejected(RuntimeError):
    """The collector refused a request or some of its events; the message carries its answer."""


@dataclass
class CollectorClient:
    url: str
    browser_key: str
    server_key: str
    batch_size: int = 100
    max_wait_s: float = 1.0
    retry_for_s: float = 60.0  # how long one buffer is retried while the collector is away or busy
    accepted: int = 0
    _buffers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _conn: http.client.HTTPConnection | None = None
    _oldest: float | None = None  # monotonic time of the oldest buffered event

    def send(self, schema: str, record: dict[str, Any]) -> None:
        """Buffer one event. Every buffer is posted when one is full or the oldest event has waited
        ``max_wait_s``: the sales activities (a few per hundred events, another write key) used to wait for
        a hundred of their own, reaching the worker seconds after the MQLs they follow up, which then
        counted as missed."""
        key = self.server_key if _server_side(schema, record) else self.browser_key
        event = {k: v for k, v in record.items() if k not in STAMPED_BY_COLLECTOR}
        buffer = self._buffers.setdefault(key, [])
        buffer.append({"type": schema, **event})
        now = time.monotonic()
        if self._oldest is None:
            self._oldest = now
        if len(buffer) >= self.batch_size or now - self._oldest >= self.max_wait_s:
            self.flush()

    def flush(self) -> None:
        for key in list(self._buffers):
            self._post(key)
        self._oldest = None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._conn is not None:
                self._conn.close()

    def _post(self, key: str) -> None:
        """Post one buffer; retry it (same event ids: duplicates are removed downstream) on a dropped
        connection, 429 or 503, as docs/ingestion.md tells clients to, for up to ``retry_for_s``. A
        collector restart mid-run used to end ``generate --via collector`` with a BrokenPipeError."""
        batch = self._buffers.pop(key, [])
        if not batch:
            return
        body = json.dumps({"batch": batch}).encode()
        deadline = time.monotonic() + self.retry_for_s
        attempt = 0
        while True:
            attempt += 1
            try:
                status, retry_after, answer = self._request(key, body)
            except (OSError, http.client.HTTPException) as exc:
                self._reset()
                status, retry_after, answer = None, None, f"{type(exc).__name__}: {exc}"
            if status == 202:
                self.accepted += len(batch)
                return
            if status not in (None, 429, 503) or time.monotonic() >= deadline:
                raise CollectorRejected(f"collector answered {status or 'nothing'}: {answer[:500]}")
            # at least the back-off: a Retry-After of 0, or a date already past, had the client re-send at
            # once, hammering a collector (or a proxy) that just said it is overloaded, for all of retry_for_s
            time.sleep(min(max(retry_after or 0.0, backoff_seconds(attempt + 1, 0.2, 5.0)), 5.0))

    def _request(self, key: str, body: bytes) -> tuple[int, float | None, str]:
        if self._conn is None:
            parts = urlsplit(self.url)
            self._conn = http.client.HTTPConnection(
                parts.hostname or "127.0.0.1", parts.port or 80, timeout=30
            )
        self._conn.request(
            "POST",
            "/v1/events",
            body=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        response = self._conn.getresponse()
        answer = response.read().decode(errors="replace")
        return response.status, _seconds(response.getheader("Retry-After")), answer

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> CollectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
