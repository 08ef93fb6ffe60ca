"""Decoded records → ClickHouse rows, one table per record schema. Pure: no clock, no I/O.

Why here and not in SQL: the sink inserts plain tuples in the column order declared below, which is the
fastest path through clickhouse-connect and keeps every column decision (JSON for nested signals, keyed
hash for emails, also for those inside URLs: ``sinks.url_privacy``) in one reviewable place. Timestamps
stay int epoch milliseconds: clickhouse-connect writes ints into ``DateTime64(3)`` as raw ticks without
building datetime objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sinks.url_privacy import keyed_email_hash, scrub_event, scrub_signals

Row = tuple[Any, ...]
ORIGIN_COLUMNS = ("topic", "partition", "offset")

EVENT_TYPES = ("web_visit", "email_click", "download", "content_view")
EVENT_FIELDS = (
    "event_id",
    "event_type",
    "event_time",
    "lead_id",
    "anonymous_id",
    "source",
    "received_at",
    "url",
    "page_category",
    "referrer",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "campaign_id",
    "email_id",
    "link_url",
    "content_id",
    "asset_type",
    "content_type",
    "dwell_ms",
    "percent_viewed",
    "channel",
    "page_view_id",
)


@dataclass(frozen=True)
class Origin:
    """Where a record was read: it becomes the row's topic/partition/offset columns."""

    topic: str
    partition: int
    offset: int


def email_hash(email: str | None, key: bytes) -> str | None:
    """Keyed HMAC-SHA256 of a normalised email (hex). Same email + key → same hash, so analysts can join
    and count leads by email without the address itself ever reaching ClickHouse (DESIGN §10)."""
    if not email:
        return None
    return keyed_email_hash(email, key)


def _event(schema: str, r: Mapping[str, Any], key: bytes) -> Row:
    r = scrub_event(schema, r, key) or r  # emails in url/referrer/link_url/utm_* as tokens (DESIGN §10)
    return tuple(schema if name == "event_type" else r.get(name) for name in EVENT_FIELDS)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _lead_score(schema: str, r: Mapping[str, Any], key: bytes) -> Row:
    return (
        r["lead_id"],
        r["score"],
        r["fit"],
        r["behaviour"],
        r["previous_score"],
        r["band"],
        r["stage"],
        r["as_of"],
        r["trigger_event_id"],
        r["computed_at"],
        r.get("account_domain"),
        r.get("account_score"),
        _json(scrub_signals(r.get("reasons") or [], key)),
        r["change_reason"],
    )


def _account_score(schema: str, r: Mapping[str, Any], key: bytes) -> Row:
    return (r["domain"], r["score"], r["leads"], _json(r["top_leads"]), r["as_of"], r["computed_at"])


def _stage_transition(schema: str, r: Mapping[str, Any], key: bytes) -> Row:
    return (
        r["transition_id"],
        r["lead_id"],
        r["from_stage"],
        r["to_stage"],
        r["reason"],
        r["trigger_event_id"],
        r["score"],
        r["occurred_at"],
    )


def _sla_timeout(schema: str, r: Mapping[str, Any], key: bytes) -> Row:
    return (
        r["timeout_id"],
        r["lead_id"],
        r["sla"],
        r["level"],
        r["started_at"],
        r["due_at"],
        r.get("owner"),
        r["fired_at"],
        list(r.get("notify") or []),
    )


def _hot_lead(schema: str, r: Mapping[str, Any], key: bytes) -> Row:
    return (
        r["notification_id"],
        r["lead_id"],
        r["score"],
        r["fit"],
        r["behaviour"],
        r["reason"],
        r["became_hot_at"],
        r.get("sla_due_at"),
        r.get("owner"),
        _json(scrub_signals(r.get("signals") or [], key)),
        email_hash(r.get("email"), key),
        r.get("company_name"),
        r.get("company_domain"),
        r.get("company_size"),
        r.get("industry"),
        r.get("job_title"),
        r.get("country"),
        r.get("account_score"),
    )


def _lead_identified(schema: str, r: Mapping[str, Any], key: bytes) -> Row:
    return (
        r["event_id"],
        r["lead_id"],
        r.get("anonymous_id"),
        r["event_time"],
        r["source"],
        r.get("received_at"),
        email_hash(r.get("email"), key),
        r.get("company_domain"),
        r.get("company_name"),
        r.get("company_size"),
        r.get("industry"),
        r.get("job_title"),
        r.get("seniority"),
        r.get("country"),
        list(r.get("flags") or []),
        r.get("owner"),
        r.get("segment"),
    )


def _sales_activity(schema: str, r: Mapping[str, Any], key: bytes) -> Row:
    return (
        r["event_id"],
        r["lead_id"],
        r["event_time"],
        r["source"],
        r.get("received_at"),
        r["activity"],
        r.get("owner"),
        r.get("reason"),
        r.get("amount"),
    )


@dataclass(frozen=True)
class TableSpec:
    """A sink table: its data columns (then topic/partition/offset) and the builder of one row.

    ``keyed_by_id``: the first column identifies the record (``event_id``, ``transition_id``, ...), so a
    second row with the same value is a re-send (``sinks.recent_ids``). Scores are keyed by lead or domain
    and every record is a new version: not keyed by id."""

    table: str
    columns: tuple[str, ...]
    build: Callable[[str, Mapping[str, Any], bytes], Row]
    keyed_by_id: bool = True

    @property
    def qualified(self) -> str:
        return f"leadpulse.{self.table}"

    @property
    def insert_columns(self) -> tuple[str, ...]:
        return self.columns + ORIGIN_COLUMNS


EVENTS = TableSpec("events", EVENT_FIELDS, _event)
LEAD_SCORES = TableSpec(
    "lead_scores",
    (
        "lead_id",
        "score",
        "fit",
        "behaviour",
        "previous_score",
        "band",
        "stage",
        "as_of",
        "trigger_event_id",
        "computed_at",
        "account_domain",
        "account_score",
        "reasons",
        "change_reason",
    ),
    _lead_score,
    keyed_by_id=False,
)
ACCOUNT_SCORES = TableSpec(
    "account_scores",
    ("domain", "score", "leads", "top_leads", "as_of", "computed_at"),
    _account_score,
    keyed_by_id=False,
)
STAGE_TRANSITIONS = TableSpec(
    "stage_transitions",
    (
        "transition_id",
        "lead_id",
        "from_stage",
        "to_stage",
        "reason",
        "trigger_event_id",
        "score",
        "occurred_at",
    ),
    _stage_transition,
)
SLA_EVENTS = TableSpec(
    "sla_events",
    ("timeout_id", "lead_id", "sla", "level", "started_at", "due_at", "owner", "fired_at", "notify"),
    _sla_timeout,
)
HOT_LEADS = TableSpec(
    "hot_leads",
    (
        "notification_id",
        "lead_id",
        "score",
        "fit",
        "behaviour",
        "reason",
        "became_hot_at",
        "sla_due_at",
        "owner",
        "signals",
        "email_hash",
        "company_name",
        "company_domain",
        "company_size",
        "industry",
        "job_title",
        "country",
        "account_score",
    ),
    _hot_lead,
)
LEADS = TableSpec(
    "leads",
    (
        "event_id",
        "lead_id",
        "anonymous_id",
        "event_time",
        "source",
        "received_at",
        "email_hash",
        "company_domain",
        "company_name",
        "company_size",
        "industry",
        "job_title",
        "seniority",
        "country",
        "flags",
        "owner",
        "segment",
    ),
    _lead_identified,
)
SALES_ACTIVITIES = TableSpec(
    "sales_activities",
    ("event_id", "lead_id", "event_time", "source", "received_at", "activity", "owner", "reason", "amount"),
    _sales_activity,
)

# Record schema → table. The dead_letter schema has no table: the sink does not consume the DLQ.
TABLE_FOR_SCHEMA: dict[str, TableSpec] = {
    **dict.fromkeys(EVENT_TYPES, EVENTS),
    "lead_score": LEAD_SCORES,
    "account_score": ACCOUNT_SCORES,
    "stage_transition": STAGE_TRANSITIONS,
    "sla_timeout": SLA_EVENTS,
    "hot_lead": HOT_LEADS,
    "lead_identified": LEADS,
    "sales_activity": SALES_ACTIVITIES,
}
TABLES: tuple[TableSpec, ...] = (
    EVENTS,
    LEAD_SCORES,
    ACCOUNT_SCORES,
    STAGE_TRANSITIONS,
    SLA_EVENTS,
    HOT_LEADS,
    LEADS,
    SALES_ACTIVITIES,
)


def to_row(schema: str, record: Mapping[str, Any], origin: Origin, email_key: bytes) -> tuple[TableSpec, Row]:
    """The table and row of one decoded record. Raises KeyError naming the schema when it has no table,
    or the missing field when the record lacks a required one."""
    try:
        spec = TABLE_FOR_SCHEMA[schema]
    except KeyError:
        raise KeyError(f"no ClickHouse table for schema {schema!r}") from None
    return spec, (*spec.build(schema, record, email_key), origin.topic, origin.partition, origin.offset)
