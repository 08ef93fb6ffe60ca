"""Re-publish stored history from ClickHouse to the input topics, so workers can reprocess it.

Why only events and sales activities: they are stored complete, but for an email inside a URL or utm value,
stored as its ``email-hash:`` token (``sinks.url_privacy``): the worker reads nothing from it. Profiles
(``lead_identified``) are stored with the email as a keyed hash, so they cannot be rebuilt faithfully;
re-send those from their source.
Records keep their ``event_id``, so downstream dedup (worker state, ReplacingMergeTree) makes a replay safe.
They also carry the ``leadpulse-replayed`` header: they were read from ClickHouse, so the sink does not
store them again (the daily views would count them twice: docs/clickhouse.md).

A stored record that today's checks refuse (stored before a rule existed, e.g. an ``event_time`` before
2000) is skipped and reported, not sent: one old row must not stop a replay of a whole window, and the
worker would only dead-letter it.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.errors import SchemaValidationError
from sinks.query_service import Runner
from sinks.rows import EVENT_FIELDS
from streams.erasures import record_erased

EVENT_SCHEMA_FIELDS = {
    "web_visit": (
        "url",
        "page_category",
        "referrer",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "utm_term",
        "utm_content",
        "page_view_id",
    ),
    "email_click": ("campaign_id", "email_id", "link_url"),
    "download": ("content_id", "asset_type"),
    "content_view": ("content_id", "content_type", "dwell_ms", "percent_viewed", "channel", "page_view_id"),
}
COMMON = ("event_id", "event_time", "anonymous_id", "lead_id", "source", "received_at")
TIMES = ("event_time", "received_at")
ACTIVITY_FIELDS = (
    "event_id",
    "event_time",
    "lead_id",
    "source",
    "received_at",
    "activity",
    "owner",
    "reason",
    "amount",
)


def _select(table: str, columns: tuple[str, ...]) -> str:
    """The window is applied in a subquery: in ClickHouse an output alias shadows the column of the same name
    in WHERE, so ``toUnixTimestamp64Milli(event_time) AS event_time`` made the bounds compare milliseconds
    with a DateTime64, and every window came back empty."""
    spelled = ", ".join(f"toUnixTimestamp64Milli({c}) AS {c}" if c in TIMES else c for c in columns)
    return (
        f"SELECT {spelled} FROM (SELECT * FROM leadpulse.{table} FINAL "
        "WHERE event_time >= fromUnixTimestamp64Milli({since:Int64}) "
        "AND event_time < fromUnixTimestamp64Milli({until:Int64})) ORDER BY event_time"
    )


def stored_records(run: Runner, since_ms: int, until_ms: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(schema, record) for every stored event and sales activity in [since, until), oldest first across
    both tables. Why merged, not events then activities: a worker replaying an MQL a week old would see its
    follow-up deadline overdue and report a breach before the follow-up activity, replayed later, arrived."""
    params = {"since": since_ms, "until": until_ms}
    events = (
        (row["event_type"], {f: row[f] for f in COMMON + EVENT_SCHEMA_FIELDS[row["event_type"]]})
        for row in run(_select("events", EVENT_FIELDS), params).dicts()
    )
    activities = (
        ("sales_activity", row) for row in run(_select("sales_activities", ACTIVITY_FIELDS), params).dicts()
    )
    yield from heapq.merge(events, activities, key=lambda item: int(item[1]["event_time"]))


#: Kafka header on every record ``leadpulse replay`` publishes.
REPLAYED_HEADER = "leadpulse-replayed"
REPLAYED_HEADERS = [(REPLAYED_HEADER, b"1")]


def is_replayed(headers: Iterable[tuple[str, bytes | None]]) -> bool:
    """Whether a record was re-published from ClickHouse by ``leadpulse replay`` (so it is stored already)."""
    return any(name == REPLAYED_HEADER for name, _ in headers)


class Sender(Protocol):
    """What ``replay`` needs of ``streams.producer.Producer``."""

    def send(
        self, schema_or_topic: str, event: Any, *, headers: list[tuple[str, bytes]] | None = ...
    ) -> Any: ...


@dataclass
class Refused:
    """A stored record that today's checks refuse, so it was not sent."""

    schema: str
    event_id: str
    problem: str


@dataclass
class ReplayResult:
    sent: dict[str, int] = field(default_factory=dict)  # per schema
    refused: list[Refused] = field(default_factory=list)
    erased: int = 0  # records of identities erased with `leadpulse forget`, left out


def replay(
    run: Runner, producer: Sender, since_ms: int, until_ms: int, erased: Collection[str] = ()
) -> ReplayResult:
    """Publish stored records, marked as replayed; counts what was sent per schema and lists what the
    producer's checks refused.

    Records of an ``erased`` identity (the erasure log's) are left out: they are still stored only while
    their erasure is pending (the sink backing off, a ``forget`` whose deletion failed), and re-published
    they would be on the input topics again (``sales.activities`` is kept forever), though the worker and
    the sink drop them (docs/privacy.md)."""
    result = ReplayResult()
    for schema, record in stored_records(run, since_ms, until_ms):
        if erased and record_erased(schema, record, erased.__contains__):
            result.erased += 1
            continue
        try:
            producer.send(schema, record, headers=REPLAYED_HEADERS)
        except SchemaValidationError as exc:
            result.refused.append(Refused(schema, str(record.get("event_id")), str(exc)))
            continue
        result.sent[schema] = result.sent.get(schema, 0) + 1
    return result
