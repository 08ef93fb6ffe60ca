"""The fault suite's oracle: what the system must have done with the traffic that was acknowledged.

A fault test builds seeded traffic (``build_traffic``), produces it through the real SDK and keeps what the
broker acknowledged (``produce``), injects its fault, then compares what the real processes left behind —
output topics (``read_outputs``) and ClickHouse rows (``stored_rows``) — with ``expected_final_state``, the
pure core (``agents.core.step`` / ``check_timers``) replayed over the same input.

Why the oracle also says which leads it cannot judge: the worker sees one lead's events from different topics
in arrival order, not in the list's order, and fires timers by wall clock between batches. For most leads
neither matters (scoring is by event time, newest profile wins); for some it legitimately does. So the replay
runs three times, in the given order and with each topic's events moved to the front/back (per-topic order
kept, as a partition keeps it), and a lead whose outcome differs between them is *order-sensitive*; a lead
with a timer due while some of its events were still to come, or due within ``clock_margin_ms`` of ``now_ms``,
is *clock-sensitive*. Those are left out of the comparison, counted, and reported by the tests; everything
else must match exactly (scores within ``SCORE_EPSILON``, the threshold below which no score is emitted).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord

from agents.core import SCORE_EPSILON, check_timers, next_deadline, step
from agents.outputs import Output
from agents.rules import Rules
from agents.scoring import behaviour_at
from agents.state import LeadState
from schemas.errors import SchemaError
from schemas.registry import default_registry
from sinks.query_service import Runner
from streams.producer import DeliveryError, Producer, lead_key
from streams.reader import Decoded, NotDrained, Undecodable, drain_topics
from streams.settings import Settings
from streams.topics import BY_SCHEMA, INPUTS
from streams.traffic import plan_traffic
from streams.traffic_journey import DAY_MS, MINUTE_MS

Event = tuple[str, dict[str, Any]]  # (schema name, record)

#: The id of each emitted record kind (what consumers dedup by).
ID_FIELD = {"stage_transition": "transition_id", "hot_lead": "notification_id", "sla_timeout": "timeout_id"}
#: The identity a ClickHouse table deduplicates by: its ReplacingMergeTree ORDER BY (sinks/migrations).
DEDUP_KEY = {
    "events": "event_id",
    "leads": "event_id",
    "sales_activities": "event_id",
    "lead_scores": "(lead_id, as_of, trigger_event_id)",
    "stage_transitions": "transition_id",
    "sla_events": "timeout_id",
    "hot_leads": "notification_id",
}
INPUT_TOPICS = {spec.schema: spec.name for spec in INPUTS}
IDENTITY_FIELDS = ("event_id", "lead_id", "anonymous_id")


# --- traffic ---------------------------------------------------------------------------------------------
def build_traffic(
    seed: int, leads: int, *, id_prefix: str, now_ms: int | None = None, span_ms: int = 3 * DAY_MS
) -> list[Event]:
    """Realistic mixed input for ``leads`` leads (``streams.traffic``: all six input schemas, personas that
    turn hot, are followed up or missed, anonymous browsing later identified), ending a few minutes before
    ``now_ms`` in event-time order.

    ``id_prefix`` (use the test's topic prefix) goes in front of every event, lead and anonymous id: the
    session's ClickHouse is shared and its tables deduplicate by id, so two tests must never share one.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    plan = plan_traffic(seed, leads, now_ms - span_ms - 5 * MINUTE_MS, span_ms)
    return [(schema, _prefixed(record, id_prefix)) for schema, record in plan.events]


def _prefixed(record: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = dict(record)
    for name in IDENTITY_FIELDS:
        if out.get(name):
            out[name] = f"{prefix}{out[name]}"
    return out


@dataclass
class Acknowledged:
    """What the broker acknowledged: event id -> (topic, partition, offset), and the ids per schema."""

    positions: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    by_schema: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    failed: list[str] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        return set(self.positions)


def produce(settings: Settings, events: Iterable[Event], producer: Producer | None = None) -> Acknowledged:
    """Publish through the SDK (``Producer.send``: validated, keyed by lead) and wait for every answer.

    Only acknowledged events are owed downstream; failures are listed, not raised, so a fault test can
    inject faults under the producer too."""
    own = producer is None
    producer = producer or Producer(settings)
    sent = []
    try:
        for schema, record in events:
            sent.append((schema, str(record["event_id"]), producer.send(schema, record)))
        with contextlib.suppress(DeliveryError):  # the futures below say which ones failed, with offsets
            producer.flush()
    finally:
        if own:
            with contextlib.suppress(DeliveryError):
                producer.close()
    acked = Acknowledged()
    for schema, event_id, future in sent:
        if future.succeeded():
            meta = future.get()
            acked.positions[event_id] = (meta.topic, meta.partition, meta.offset)
            acked.by_schema[schema].add(event_id)
        else:
            acked.failed.append(event_id)
    return acked


# --- the pure-core replay ----------------------------------------------------------------------------------
@dataclass
class LeadOutcome:
    """One lead's end state as the core computes it, and every record it emitted on the way."""

    stage: str
    score: float  # exact: fit + behaviour as of the lead's newest event time (after timers)
    emitted: dict[str, set[str]]  # schema -> ids (ID_FIELD kinds)


#: What is compared per lead: its final stage, its final score, how many hot-lead notifications it got
#: (their ids number the lead's transitions, so they shift when an earlier move is skipped), and the ids of
#: each emitted kind.
ASPECTS = ("stage", "score", "notified", *ID_FIELD)


@dataclass
class Expected:
    """The oracle's outcome per lead, and per lead the aspects it cannot judge (and why)."""

    leads: dict[str, LeadOutcome]
    states: dict[str, LeadState]  # every key, anonymous ones included
    order_sensitive: dict[str, set[str]]  # lead -> aspects that change with arrival order
    clock_sensitive: dict[str, set[str]]  # lead -> aspects that change with when timers are scanned

    def judged(self, aspect: str) -> set[str]:
        """Leads whose ``aspect`` cannot depend on arrival order or on when timers were scanned."""
        return {
            lead
            for lead in self.leads
            if aspect not in self.order_sensitive.get(lead, ())
            and aspect not in self.clock_sensitive.get(lead, ())
        }

    def emitted(self, schema: str, leads: Iterable[str] | None = None) -> set[str]:
        chosen = self.judged(schema) if leads is None else leads
        return {i for lead in chosen for i in self.leads[lead].emitted.get(schema, set())}

    def summary(self) -> str:
        leads = ", ".join(f"{a} {len(self.judged(a))}" for a in ("stage", "score", "notified"))
        ids = ", ".join(f"{s} {len(self.emitted(s))}/{len(self.emitted(s, self.leads))}" for s in ID_FIELD)
        return (
            f"{len(self.leads)} leads ({len(self.order_sensitive)} with order-sensitive aspects, "
            f"{len(self.clock_sensitive)} clock-sensitive); judged: leads by {leads}; ids {ids}"
        )

    def judging_all(self) -> Expected:
        """The same oracle with nothing excused: to count (not assert) how often the sensitive differ."""
        return Expected(self.leads, self.states, {}, {})


def expected_final_state(
    events: list[Event],
    rules: Rules,
    now_ms: int,
    *,
    skew: int = 20,
    clock_margin_ms: int = 10 * MINUTE_MS,
) -> Expected:
    """Replay ``events`` (each lead's events in list order) through the pure core, identity forwards
    inline, then one timer scan at ``now_ms``. Sensitive aspects (module docstring): order-sensitive when a
    topic ``skew`` records early or late changes them; clock-sensitive when scanning timers after every
    event (a worker catching up on a backlog of past events) instead of only at the end changes them, or
    (every aspect) when a deadline is within ``clock_margin_ms`` of ``now_ms``."""
    leads, states = _replay(events, rules, now_ms)
    eager, _ = _replay(events, rules, now_ms, scan_every_event=True)
    clock: dict[str, set[str]] = defaultdict(set)
    order: dict[str, set[str]] = defaultdict(set)
    for lead, outcome in leads.items():
        if differ := _differing(outcome, eager.get(lead)):
            clock[lead] |= differ
        due = next_deadline(states[lead], rules)
        if due is not None and abs(due - now_ms) <= clock_margin_ms:
            clock[lead] |= set(ASPECTS)
    for schema in sorted({schema for schema, _ in events}):
        for shift in (-skew, skew):
            other, _ = _replay(_skewed(events, schema, shift), rules, now_ms)
            for lead, outcome in leads.items():
                if differ := _differing(outcome, other.get(lead)):
                    order[lead] |= differ
    return Expected(leads, states, dict(order), dict(clock))


def _skewed(events: list[Event], schema: str, shift: int) -> list[Event]:
    """The same events with one topic's records ``shift`` positions late (or early, if negative) against
    the others, as when a partition's fetch lags behind; each topic's own order is kept."""
    ranked = sorted(range(len(events)), key=lambda i: i + (shift if events[i][0] == schema else 0))
    return [events[i] for i in ranked]


def _differing(a: LeadOutcome, b: LeadOutcome | None) -> set[str]:
    if b is None:
        return set(ASPECTS)
    found = {s for s in ID_FIELD if a.emitted.get(s, set()) != b.emitted.get(s, set())}
    if a.stage != b.stage:
        found.add("stage")
    if abs(a.score - b.score) > SCORE_EPSILON:
        found.add("score")
    if len(a.emitted.get("hot_lead", ())) != len(b.emitted.get("hot_lead", ())):
        found.add("notified")
    return found


def _replay(
    events: list[Event], rules: Rules, now_ms: int, *, scan_every_event: bool = False
) -> tuple[dict[str, LeadOutcome], dict[str, LeadState]]:
    states: dict[str, LeadState] = {}
    emitted: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    def record(outputs: Iterable[Output]) -> None:
        for out in outputs:
            if out.schema in ID_FIELD:
                emitted[out.key][out.schema].add(out.record[ID_FIELD[out.schema]])

    for schema, event in events:
        todo = [(lead_key(event) or "", schema, event)]
        while todo:
            key, kind, record_ = todo.pop(0)
            result = step(states.get(key), key, kind, dict(record_), rules, now_ms)
            states[key] = result.state
            record(result.outputs)
            todo[0:0] = [(f.key, f.schema, f.event) for f in result.forwards]
            if scan_every_event and result.state.lead_id == key:
                record(check_timers(result.state, rules, now_ms).outputs)
    leads: dict[str, LeadOutcome] = {}
    for key, state in states.items():
        if state.lead_id != key:
            continue  # an anonymous visitor (its history went to its lead)
        record(check_timers(state, rules, now_ms).outputs)
        score = state.fit + behaviour_at(state, rules, state.max_time)
        leads[key] = LeadOutcome(state.stage, score, {s: set(ids) for s, ids in emitted[key].items()})
    return leads, states


# --- what the real processes left behind -----------------------------------------------------------------
@dataclass
class Observed:
    """The output topics read to their end."""

    records: dict[str, list[dict[str, Any]]]  # schema -> records in topic order
    undecodable: list[Undecodable]

    def latest_scores(self) -> dict[str, dict[str, Any]]:
        """Newest ``lead_score`` per lead (one lead = one partition, so topic order is time order)."""
        return {r["lead_id"]: r for r in self.records.get("lead_score", [])}

    def ids(self, schema: str) -> Counter[str]:
        return Counter(r[ID_FIELD[schema]] for r in self.records.get(schema, []))

    def ids_of(self, schema: str, leads: set[str]) -> Counter[str]:
        return Counter(r[ID_FIELD[schema]] for r in self.records.get(schema, []) if r["lead_id"] in leads)


def read_raw(
    settings: Settings, topics: Iterable[str], *, idle_ms: int = 300, max_seconds: float = 120.0
) -> list[ConsumerRecord]:
    """Every record of ``topics`` (already prefixed), tombstones included, from offset 0 until drained, in
    offset order per partition: ``streams.reader.drain_topics``, with one consumer for every topic (a fault
    test reads four to seven topics per check, and a consumer per topic cost ~0.9 s each, measured, which
    made a check ~5 s)."""
    try:
        return list(drain_topics(settings, topics, idle_ms=idle_ms, max_seconds=max_seconds))
    except NotDrained as exc:
        raise AssertionError(str(exc)) from None


def read_decoded(settings: Settings, topics: Iterable[str]) -> list[Decoded | Undecodable]:
    """``read_raw`` decoded as ``streams.reader.read_topic`` decodes (tombstones skipped)."""
    registry = default_registry()
    items: list[Decoded | Undecodable] = []
    for msg in read_raw(settings, topics):
        if msg.value is None:
            continue
        try:
            schema, record = registry.decode(msg.value)
        except SchemaError as exc:
            items.append(Undecodable(msg.topic, msg.partition, msg.offset, msg.key, msg.value, exc))
            continue
        headers = tuple(msg.headers or ())
        items.append(
            Decoded(msg.topic, msg.partition, msg.offset, msg.key, schema, record, headers, msg.timestamp)
        )
    return items


def read_outputs(settings: Settings, schemas: Iterable[str] = ("lead_score", *ID_FIELD)) -> Observed:
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    undecodable: list[Undecodable] = []
    for item in read_decoded(settings, [settings.topic(BY_SCHEMA[schema].name) for schema in schemas]):
        if isinstance(item, Decoded):
            records[item.schema].append(item.record)
        else:
            undecodable.append(item)
    return Observed(records, undecodable)


def read_dead_letters(settings: Settings) -> list[Decoded]:
    """Every record on the ``dlq`` topic (``record`` is the dead letter)."""
    return [item for item in read_decoded(settings, [settings.topic("dlq")]) if isinstance(item, Decoded)]


def mismatches(expected: Expected, observed: Observed) -> list[str]:
    """Differences between the oracle and the output topics over what it judges; empty = equal.

    A repeated id (at-least-once after a crash) is fine only if every copy is the same record apart from
    wall-clock stamps; consumers drop the repeats by id."""
    found: list[str] = []
    latest = observed.latest_scores()
    for aspect in ("stage", "score"):
        for lead in sorted(expected.judged(aspect)):
            want, got = expected.leads[lead], latest.get(lead)
            if got is None:
                found.append(f"{lead}: no lead_score emitted (expected stage {want.stage})")
            elif aspect == "stage" and got["stage"] != want.stage:
                found.append(f"{lead}: stage {got['stage']} != oracle {want.stage}")
            elif aspect == "score" and abs(got["score"] - want.score) > SCORE_EPSILON:
                found.append(f"{lead}: score {got['score']:.4f} != oracle {want.score:.4f}")
    notified: dict[str, set[str]] = defaultdict(set)
    for record in observed.records.get("hot_lead", []):
        notified[record["lead_id"]].add(record["notification_id"])
    for lead in sorted(expected.judged("notified")):
        want_n = len(expected.leads[lead].emitted.get("hot_lead", ()))
        if len(notified[lead]) != want_n:
            found.append(f"{lead}: {len(notified[lead])} hot-lead notification(s) != oracle {want_n}")
    for schema in ID_FIELD:
        judged = expected.judged(schema)
        got_ids = observed.ids_of(schema, judged)
        want_ids = expected.emitted(schema, judged)
        for missing in sorted(want_ids - set(got_ids))[:20]:
            found.append(f"{schema} {missing}: missing from the output topic")
        for extra in sorted(set(got_ids) - want_ids)[:20]:
            found.append(f"{schema} {extra}: emitted but not by the oracle")
        for dup in (i for i, n in observed.ids(schema).items() if n > 1):
            copies = {_without_stamps(r) for r in observed.records[schema] if r[ID_FIELD[schema]] == dup}
            if len(copies) > 1:
                found.append(f"{schema} {dup}: {len(copies)} different records under one id")
    return found


def _without_stamps(record: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in record.items() if k not in ("fired_at", "computed_at")))


# --- ClickHouse --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stored:
    """Rows of one table under a topic prefix: per dedup key, raw rows and rows after dedup (``FINAL``)."""

    raw: Counter[str]
    final: Counter[str]

    @property
    def duplicates_after_dedup(self) -> dict[str, int]:
        return {k: n for k, n in self.final.items() if n > 1}

    @property
    def duplicates_stored(self) -> dict[str, int]:
        """Raw rows stored more than once (the dedup tokens failed, even if a merge would hide it)."""
        return {k: n for k, n in self.raw.items() if n > 1}


def stored_rows(run: Runner, table: str, topic_prefix: str) -> Stored:
    """Count rows per dedup key in ``leadpulse.<table>`` for topics under ``topic_prefix``.

    ``run`` is ``sinks.query_service.http_runner(sink_url)`` while a sink owns the embedded engine, else
    ``client_runner(client)``."""
    key = DEDUP_KEY[table]
    counts = []
    for final in ("", " FINAL"):
        sql = (
            f"SELECT toString({key}) AS k, count() FROM leadpulse.{table}{final} "
            "WHERE startsWith(topic, {p:String}) GROUP BY k"
        )
        counts.append(Counter({str(k): int(n) for k, n in run(sql, {"p": topic_prefix}).rows}))
    return Stored(counts[0], counts[1])


def table_of(schema: str) -> str:
    from sinks.rows import TABLE_FOR_SCHEMA

    return TABLE_FOR_SCHEMA[schema].table


# --- time to recover ---------------------------------------------------------------------------------------
class RecoveryTimer:
    """Wall time from the fault to each recovery milestone, printed (``pytest -s`` shows it), never
    asserted: this machine is shared and its timings are not a contract."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.started = time.monotonic()
        self.marks: dict[str, float] = {}

    def mark(self, milestone: str) -> float:
        elapsed = time.monotonic() - self.started
        self.marks[milestone] = elapsed
        print(f"\n[recovery] {self.fault}: {milestone} {elapsed:.1f} s after the fault", flush=True)
        return elapsed
