"""Erase one lead from ClickHouse: every table holding its rows, and the daily views built from them.

Who calls it: ``leadpulse forget`` (``sinks.forget``) directly when it can open ClickHouse (a server DSN,
or an embedded directory no process owns), otherwise the running sink, which owns the embedded engine
(DESIGN §7), when it reads the erasure from the erasure log. Both paths run ``apply_erasure``, which is
idempotent: a second run finds nothing left to delete and recomputes the same aggregates.

Order, chosen so that a crash at any point leaves a state a re-run repairs:
1. find the daily-view keys (day, content, event type; day, from, to stage) the lead's rows contributed to;
2. recompute those keys from the base rows *without* the lead's (uniq states cannot be edited row-wise), so
   a crash after this step still finds the base rows, hence the same keys, on the re-run;
3. delete the base rows (``mutations_sync`` so they are gone when the call returns) and scrub the lead from
   the account roll-ups' top-lead lists;
4. record the erasure in ``leadpulse.erasures`` (ids and row counts only: nothing about the lead itself).

Identities: the lead id and every anonymous id linked to it. A row carrying any of them is the lead's data.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client

from sinks.query_service import Runner

MUTATION_SETTINGS = {"mutations_sync": 2}
# The recompute inserts must never be dropped as a repeat of an earlier identical block (a re-run of an
# erasure inserts exactly the same aggregate rows after deleting them).
RECOMPUTE_SETTINGS = {"insert_deduplicate": 0, "async_insert": 0}

# Base tables and the condition selecting a lead's rows; {ids} is an Array(String) parameter.
# ifNull: a NULL identity makes ``x IN ids`` NULL, and ``NOT (... OR NULL)`` would drop the row from the
# recompute of the daily views (ids never contain '').
ANY_IDENTITY = (
    "(ifNull(lead_id, '') IN {ids:Array(String)} OR ifNull(anonymous_id, '') IN {ids:Array(String)})"
)
BY_LEAD = "lead_id IN {ids:Array(String)}"
BASE_TABLES: tuple[tuple[str, str], ...] = (
    ("events", ANY_IDENTITY),
    ("leads", ANY_IDENTITY),
    ("lead_scores", BY_LEAD),
    ("stage_transitions", BY_LEAD),
    ("sla_events", BY_LEAD),
    ("hot_leads", BY_LEAD),
    ("sales_activities", BY_LEAD),
)
# Account roll-ups name their top leads inside a JSON column: the lead is removed from the list, the
# account's row (an aggregate over many leads) stays.
TOP_LEADS_MATCH = (
    "arrayExists(x -> JSONExtractString(x, 'lead_id') IN {ids:Array(String)}, JSONExtractArrayRaw(top_leads))"
)
TOP_LEADS_SCRUBBED = (
    "concat('[', arrayStringConcat(arrayFilter(x -> JSONExtractString(x, 'lead_id') NOT IN "
    "{ids:Array(String)}, JSONExtractArrayRaw(top_leads)), ','), ']')"
)


@dataclass(frozen=True)
class DailyView:
    """A materialized-view target and how to rebuild some of its keys from its base table.

    ``select`` is the view's own SELECT (sinks/migrations/004_daily_views.sql) with a ``{where}`` slot;
    ``key`` the target's ORDER BY expressed over the base table's columns.
    """

    target: str
    base: str
    key_columns: tuple[str, ...]
    key_exprs: tuple[str, ...]
    lead_condition: str
    select: str


CONTENT_USAGE = DailyView(
    "content_usage_daily",
    "events",
    ("day", "content_id", "event_type"),
    ("toDate(event_time)", "ifNull(content_id, '')", "event_type"),
    ANY_IDENTITY,
    "SELECT toDate(event_time) AS day, ifNull(content_id, '') AS content_id, event_type, "
    "toUInt64(count()) AS events, toInt64(sum(ifNull(dwell_ms, 0))) AS dwell_ms, "
    "uniqStateIf(assumeNotNull(lead_id), lead_id IS NOT NULL) AS leads, "
    "uniqState(assumeNotNull(coalesce(lead_id, anonymous_id, ''))) AS visitors "
    "FROM leadpulse.events WHERE ifNull(content_id, '') != '' AND {where} "
    "GROUP BY day, content_id, event_type",
)
FUNNEL = DailyView(
    "funnel_daily",
    "stage_transitions",
    ("day", "from_stage", "to_stage"),
    ("toDate(occurred_at)", "from_stage", "to_stage"),
    BY_LEAD,
    "SELECT toDate(occurred_at) AS day, from_stage, to_stage, toUInt64(count()) AS transitions, "
    "toUInt64(countIf(startsWith(reason, 'recycled'))) AS recycles "
    "FROM leadpulse.stage_transitions WHERE {where} GROUP BY day, from_stage, to_stage",
)
DAILY_VIEWS = (CONTENT_USAGE, FUNNEL)


@dataclass
class ErasureResult:
    erasure_id: str
    lead_id: str
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows deleted (views: keys recomputed)
    applied_by: str = "cli"
    skipped: bool = False  # already applied (recorded in leadpulse.erasures)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


# --- pure helpers ------------------------------------------------------------------------------------------
def record_identities(record: Mapping[str, Any]) -> list[str]:
    return sorted({str(record["lead_id"]), *(str(a) for a in record.get("anonymous_ids") or [])})


def keys_condition(view: DailyView) -> str:
    """``(expr1, expr2, expr3) IN {keys:Array(Tuple(...))}``: the view keys, over the base table."""
    return f"({', '.join(view.key_exprs)}) IN {{keys:Array(Tuple(Date, String, String))}}"


def target_keys_condition(view: DailyView) -> str:
    """The same keys, over the target table's columns."""
    return f"({', '.join(view.key_columns)}) IN {{keys:Array(Tuple(Date, String, String))}}"


_DISTRIBUTED = re.compile(r"^Distributed\(\s*'?([^',\s]+)'?\s*,\s*'?(\w+)'?\s*,\s*'?(\w+)'?")


def mutation_target(engine_full: str, table: str) -> str:
    """Where an ALTER ... DELETE must run: the table itself, or, for a ``Distributed`` table of the cluster
    layout (deploy/clickhouse/cluster.sql), its local table on every node (Distributed cannot mutate)."""
    match = _DISTRIBUTED.match(engine_full.strip())
    if not match:
        return f"leadpulse.{table}"
    cluster, database, local = match.groups()
    return f"{database}.{local} ON CLUSTER '{cluster}'"


# --- ClickHouse ---------------------------------------------------------------------------------------
def linked_anonymous_ids(run: Runner, lead_id: str) -> list[str]:
    """Anonymous ids the stored data links to the lead (profiles and events), through a read-only runner."""
    result = run(
        "SELECT DISTINCT assumeNotNull(anonymous_id) AS a FROM leadpulse.leads "
        "WHERE lead_id = {lead:String} AND anonymous_id IS NOT NULL AND anonymous_id != '' "
        "UNION DISTINCT SELECT DISTINCT assumeNotNull(anonymous_id) AS a FROM leadpulse.events "
        "WHERE lead_id = {lead:String} AND anonymous_id IS NOT NULL AND anonymous_id != ''",
        {"lead": lead_id},
    )
    return sorted({str(row[0]) for row in result.rows})


def linked_leads(run: Runner, anonymous_id: str) -> list[str]:
    """Leads the stored data links the anonymous id to (profiles and events): when ``forget`` is given an
    anonymous id, the lead it belongs to."""
    result = run(
        "SELECT DISTINCT lead_id AS l FROM leadpulse.leads WHERE anonymous_id = {a:String} AND lead_id != '' "
        "UNION DISTINCT SELECT DISTINCT assumeNotNull(lead_id) AS l FROM leadpulse.events "
        "WHERE anonymous_id = {a:String} AND lead_id IS NOT NULL AND lead_id != ''",
        {"a": anonymous_id},
    )
    return sorted({str(row[0]) for row in result.rows} - {anonymous_id})


def already_applied(client: Client, record: Mapping[str, Any]) -> bool:
    result = client.query(
        "SELECT count() FROM leadpulse.erasures WHERE erasure_id = {e:String} "
        "AND requested_at = fromUnixTimestamp64Milli({r:Int64})",
        parameters={"e": record["erasure_id"], "r": int(record["requested_at"])},
    )
    return int(result.result_rows[0][0]) > 0


def _count(client: Client, table: str, condition: str, ids: list[str]) -> int:
    result = client.query(f"SELECT count() FROM leadpulse.{table} WHERE {condition}", parameters={"ids": ids})
    return int(result.result_rows[0][0])


def _engines(client: Client) -> dict[str, str]:
    result = client.query("SELECT name, engine_full FROM system.tables WHERE database = 'leadpulse'")
    return {str(name): str(engine) for name, engine in result.result_rows}


def _recompute(client: Client, view: DailyView, ids: list[str], engines: Mapping[str, str]) -> int:
    """Rebuild the view keys the lead contributed to from the other rows; returns the number of keys."""
    found = client.query(
        f"SELECT DISTINCT {', '.join(view.key_exprs)} FROM leadpulse.{view.base} WHERE {view.lead_condition}"
        + (" AND ifNull(content_id, '') != ''" if view is CONTENT_USAGE else ""),
        parameters={"ids": ids},
    )
    keys = [tuple(row) for row in found.result_rows]
    if not keys:
        return 0
    params = {"ids": ids, "keys": keys}
    target = mutation_target(engines.get(view.target, ""), view.target)
    client.command(
        f"ALTER TABLE {target} DELETE WHERE {target_keys_condition(view)}",
        parameters=params,
        settings=MUTATION_SETTINGS,
    )
    where = f"{keys_condition(view)} AND NOT {view.lead_condition}"
    client.command(
        f"INSERT INTO leadpulse.{view.target} ({', '.join(_target_columns(view))}) "
        + view.select.format(where=where),
        parameters=params,
        settings=RECOMPUTE_SETTINGS,
    )
    return len(keys)


def _target_columns(view: DailyView) -> tuple[str, ...]:
    if view is CONTENT_USAGE:
        return ("day", "content_id", "event_type", "events", "dwell_ms", "leads", "visitors")
    return ("day", "from_stage", "to_stage", "transitions", "recycles")


def apply_erasure(
    client: Client, record: Mapping[str, Any], *, applied_by: str = "cli", now_ms: int | None = None
) -> ErasureResult:
    """Delete the lead's rows everywhere, rebuild the daily views they fed, record the erasure."""
    ids = record_identities(record)
    result = ErasureResult(str(record["erasure_id"]), str(record["lead_id"]), applied_by=applied_by)
    engines = _engines(client)
    for view in DAILY_VIEWS:
        result.rows[view.target] = _recompute(client, view, ids, engines)
    for table, condition in BASE_TABLES:
        found = _count(client, table, condition, ids)
        result.rows[table] = found
        if found:
            client.command(
                f"ALTER TABLE {mutation_target(engines.get(table, ''), table)} DELETE WHERE {condition}",
                parameters={"ids": ids},
                settings=MUTATION_SETTINGS,
            )
    scrubbed = _count(client, "account_scores", TOP_LEADS_MATCH, ids)
    result.rows["account_scores"] = scrubbed
    if scrubbed:
        target = mutation_target(engines.get("account_scores", ""), "account_scores")
        client.command(
            f"ALTER TABLE {target} UPDATE top_leads = {TOP_LEADS_SCRUBBED} WHERE {TOP_LEADS_MATCH}",
            parameters={"ids": ids},
            settings=MUTATION_SETTINGS,
        )
    client.insert(
        "leadpulse.erasures",
        [
            (
                result.erasure_id,
                result.lead_id,
                int(record["requested_at"]),
                now_ms if now_ms is not None else int(time.time() * 1000),
                result.rows,
                applied_by,
            )
        ],
        column_names=["erasure_id", "lead_id", "requested_at", "erased_at", "rows_deleted", "applied_by"],
        settings={"async_insert": 0, "insert_deduplicate": 0},
    )
    return result


def remaining_rows(run: Runner, record: Mapping[str, Any]) -> dict[str, int]:
    """Rows still holding any of the lead's identities, per base table (all 0 after an erasure)."""
    ids = record_identities(record)
    out: dict[str, int] = {}
    for table, condition in BASE_TABLES:
        rows = run(f"SELECT count() FROM leadpulse.{table} WHERE {condition}", {"ids": ids}).rows
        out[table] = int(rows[0][0])
    rows = run(f"SELECT count() FROM leadpulse.account_scores WHERE {TOP_LEADS_MATCH}", {"ids": ids}).rows
    out["account_scores"] = int(rows[0][0])
    return out


#: Erasures per query of ``erasures_with_rows``: their identities travel as one query parameter.
LEFT_CHUNK = 1000


def _identities_sql(table: str, condition: str) -> str:
    if condition == ANY_IDENTITY:
        found = "arrayJoin([ifNull(lead_id, ''), ifNull(anonymous_id, '')])"
    else:
        found = "lead_id"
    return f"SELECT DISTINCT {found} AS id FROM leadpulse.{table} WHERE {condition}"


IDENTITIES_WITH_ROWS = (
    "SELECT DISTINCT id FROM ("
    + " UNION ALL ".join(_identities_sql(table, condition) for table, condition in BASE_TABLES)
    + " UNION ALL SELECT DISTINCT arrayJoin(arrayMap(x -> JSONExtractString(x, 'lead_id'), "
    f"JSONExtractArrayRaw(top_leads))) AS id FROM leadpulse.account_scores WHERE {TOP_LEADS_MATCH}"
    ") WHERE id IN {ids:Array(String)}"
)


def erasures_with_rows(client: Client, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The erasure records some stored row (or account top-lead list) still holds an identity of.

    Why: with a server, a sink that stored rows of a lead and stopped before its tail saw the lead's
    erasure left them after ``forget``'s delete; the next sink reads that erasure at its start and must
    sweep it (``SinkErasures._sweep_erasure``). One query per ``LEFT_CHUNK`` erasures, not one per
    erasure: the log holds every erasure ever made, and nearly always nothing of them is left."""
    left: list[dict[str, Any]] = []
    for start in range(0, len(records), LEFT_CHUNK):
        chunk = records[start : start + LEFT_CHUNK]
        ids = sorted({identity for record in chunk for identity in record_identities(record)})
        rows = client.query(IDENTITIES_WITH_ROWS, parameters={"ids": ids}).result_rows
        found = {str(row[0]) for row in rows}
        left.extend(record for record in chunk if found.intersection(record_identities(record)))
    return left


def recorded_erasure(run: Runner, record: Mapping[str, Any]) -> dict[str, int] | None:
    """Row counts of this erasure request as recorded in ``leadpulse.erasures``, or None if not yet."""
    rows = run(
        "SELECT toJSONString(rows_deleted) FROM leadpulse.erasures WHERE erasure_id = {e:String} "
        "AND requested_at = fromUnixTimestamp64Milli({r:Int64}) ORDER BY erased_at DESC LIMIT 1",
        {"e": record["erasure_id"], "r": int(record["requested_at"])},
    ).rows
    if not rows:
        return None
    return {str(k): int(v) for k, v in json.loads(rows[0][0]).items()}


# --- the sink's side: drop erased identities before insert (decoded: streams.erasures.record_erased) ----
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _string(data: bytes, pos: int) -> tuple[str, int]:
    length, pos = _varint(data, pos)
    return data[pos : pos + length].decode("utf-8", errors="replace"), pos + length


def event_head(body: bytes) -> tuple[str | None, int | None, str | None, str | None]:
    """(event_id, event_time, anonymous_id, lead_id) read from the start of a behavioural event's Avro
    body, without decoding the rest: every event schema begins ``event_id: string, event_time: long,
    anonymous_id: [null, string], lead_id: [null, string]`` (checked by ``tests/unit/test_erasures.py``), so
    the sink's undecoded fast path can still drop erased identities and re-sent events and refuse events
    from the future."""
    found: list[str | None] = []
    try:
        event_id, pos = _string(body, 0)
        event_time, pos = _varint(body, pos)
        for _ in range(2):
            branch, pos = _varint(body, pos)
            if branch == 0:
                found.append(None)
            else:
                value, pos = _string(body, pos)
                found.append(value)
    except IndexError:  # a truncated body: ClickHouse rejects it and the sink dead-letters it
        return None, None, None, None
    return event_id, event_time, found[0], found[1]
