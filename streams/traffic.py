"""Realistic, seeded B2B traffic for ``leadpulse generate`` and the demo (see docs/traffic.md).

``plan_traffic`` is pure: seed, volume and time span in, a ``TrafficPlan`` out (every input event in
event-time order plus what the plan promises: who turns hot, who is left without follow-up, the content
catalogue). ``publish`` is the shell: it hands the events to a sink callable (the SDK producer, the HTTP
collector client, a file) at a given rate. Keeping them apart lets tests check the promises through the real
scoring core without a broker, and lets the same plan be replayed anywhere.
"""

from __future__ import annotations

import gc
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams import traffic_nonbuyers as nonbuyers
from streams import traffic_personas as personas
from streams.traffic_catalogue import ContentItem, build_catalogue, by_role, with_builtin_fallbacks
from streams.traffic_journey import DAY_MS, HOUR_MS, MINUTE_MS, REFERENCE_SPAN_MS, Ids, Journey, World
from streams.traffic_personas import COMMITTEE_ROLES, anonymous, committee_member, hot_buyer

Event = tuple[str, dict[str, Any]]
Sink = Callable[[str, dict[str, Any]], object]

# Share of leads per persona (committee members come in groups of 2-5 sharing a company domain).
MIX: tuple[tuple[str, float], ...] = (
    ("researcher", 0.22),
    ("nurtured", 0.20),
    ("hot_buyer", 0.14),
    ("committee", 0.12),
    ("score_buyer", 0.07),
    ("customer", 0.07),
    ("student", 0.06),
    ("churned_returning", 0.05),
    ("competitor", 0.04),
    ("retiree", 0.03),
)
PERSONAS = (*(p for p, _ in MIX), "anonymous")
SINGLE: dict[str, Callable[[Journey], None]] = {  # the personas that come one lead at a time
    "researcher": personas.researcher,
    "nurtured": personas.nurtured,
    "score_buyer": personas.score_buyer,
    "customer": personas.customer,
    "churned_returning": personas.churned_returning,
    "student": nonbuyers.student,
    "competitor": nonbuyers.competitor,
    "retiree": nonbuyers.retiree,
}
ANONYMOUS_SHARE = 0.3  # never-identified visitors per lead, on top of the leads
SLA_MISS_SHARE = 0.2  # hot buyers sales never follows up
MIN_SPAN_MS = 12 * HOUR_MS
DEFAULT_SPAN_MS = REFERENCE_SPAN_MS


@dataclass(frozen=True, slots=True)
class PlannedLead:
    """What the plan intends for one lead. ``mql_event_id``/``mql_at``: the event that makes it hot (for a
    score-based MQL the last event of the burst; the crossing is at or before it)."""

    lead_id: str
    persona: str
    company_domain: str | None
    anonymous_id: str | None
    identified_at: int
    mql_event_id: str | None = None
    mql_at: int | None = None
    immediate: bool = False
    followed_at: int | None = None  # first sales follow-up (first_touch/accepted/rejected)
    outcome: str | None = None  # won, lost, open, rejected, rejected_silent, accepted (as planned)

    @property
    def hot(self) -> bool:
        return self.mql_at is not None


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    seed: int
    start_ms: int
    end_ms: int  # "now" of the plan: SLA promises hold when timers are checked at this time
    events: list[Event]
    leads: dict[str, PlannedLead]
    anonymous_visitors: tuple[str, ...]
    catalogue: list[ContentItem]
    sla_misses: frozenset[str] = field(default_factory=frozenset)  # hot, no follow-up, deadline <= end_ms

    @property
    def hot_leads(self) -> frozenset[str]:
        return frozenset(lead_id for lead_id, lead in self.leads.items() if lead.hot)

    @property
    def followed_hot_leads(self) -> frozenset[str]:
        return frozenset(i for i, lead in self.leads.items() if lead.hot and lead.followed_at is not None)

    def personas(self) -> Counter[str]:
        counts = Counter(lead.persona for lead in self.leads.values())
        counts["anonymous"] = len(self.anonymous_visitors)
        return counts

    def manifest(self) -> dict[str, Any]:
        """What the plan promises, as JSON (``leadpulse generate --manifest``)."""
        return {
            "seed": self.seed,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "events": len(self.events),
            "leads": {i: lead.persona for i, lead in sorted(self.leads.items())},
            "anonymous_visitors": len(self.anonymous_visitors),
            "hot_leads": sorted(self.hot_leads),
            "sla_misses": sorted(self.sla_misses),
            "personas": dict(sorted(self.personas().items())),
        }


def quotas(leads: int) -> dict[str, int]:
    """Leads per persona: proportional (largest remainder), every persona present once there is room."""
    counts = {p: int(leads * share) for p, share in MIX}
    by_remainder = sorted(MIX, key=lambda ps: (-(leads * ps[1] - int(leads * ps[1])), PERSONAS.index(ps[0])))
    for persona, _ in by_remainder[: leads - sum(counts.values())]:
        counts[persona] += 1
    minimum = {p: 2 if p == "committee" else 1 for p, _ in MIX}
    if leads >= sum(minimum.values()):
        for persona, need in minimum.items():
            while counts[persona] < need:
                donor = max(counts, key=lambda p: counts[p] - minimum[p])
                counts[donor] -= 1
                counts[persona] += 1
    return counts


def committee_sizes(rng: random.Random, members: int) -> list[int]:
    sizes = []
    while members > 0:
        size = members if members <= 5 else rng.randint(3, 5)
        if members - size == 1:
            size -= 1
        sizes.append(size)
        members -= size
    return sizes


def plan_traffic(
    seed: int,
    leads: int,
    start_ms: int,
    span_ms: int = DEFAULT_SPAN_MS,
    catalogue: Sequence[ContentItem] | None = None,
) -> TrafficPlan:
    """A reproducible plan: the same arguments give the same events, ids and metadata. ``catalogue``
    replaces the built-in content (see ``catalogue_from_rows``); roles it leaves empty keep built-in items.

    The cyclic garbage collector is paused while planning: a plan is hundreds of thousands of new dicts and
    no cycles, and the collector's repeated scans of them halved the speed at 200k events (measured).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _plan(seed, leads, start_ms, span_ms, catalogue)
    finally:
        if collecting:
            gc.enable()


def _plan(
    seed: int, leads: int, start_ms: int, span_ms: int, own: Sequence[ContentItem] | None
) -> TrafficPlan:
    if leads < 0:
        raise ValueError(f"leads must be >= 0, got {leads}")
    if span_ms < MIN_SPAN_MS:
        raise ValueError(
            f"span_ms must be at least {MIN_SPAN_MS} ({MIN_SPAN_MS // HOUR_MS} h) so hot leads fit their "
            f"follow-up and SLA deadlines; got {span_ms}"
        )
    end_ms = start_ms + span_ms
    rng = random.Random(f"leadpulse-traffic:{seed}")
    catalogue = build_catalogue(end_ms) if own is None else with_builtin_fallbacks(own, end_ms)
    ids = Ids(seed)
    world = World(rng, ids, by_role(catalogue), span_ms / REFERENCE_SPAN_MS)
    numbers = list(range(leads))
    rng.shuffle(numbers)
    lead_ids = iter(f"L-{seed}-{n:05d}" for n in numbers)

    journeys: list[Journey] = []

    def journey(persona: str) -> Journey:
        j = Journey(world, persona, next(lead_ids), ids.anonymous())
        journeys.append(j)
        return j

    counts = quotas(leads)
    hot = counts["hot_buyer"]
    misses = set(rng.sample(range(hot), max(1, round(hot * SLA_MISS_SHARE)) if hot >= 2 else 0))
    for persona, _ in MIX:
        if persona == "committee":
            for size in committee_sizes(rng, counts[persona]):
                company = world.company("high")
                champion = journey(persona)
                hot_buyer(champion, True, "high", rng.choice(("director", "vp")), company)
                for role in COMMITTEE_ROLES[: size - 1]:
                    member = journey(persona)
                    member.anchor = champion
                    committee_member(member, company, role)
        elif persona == "hot_buyer":
            for n in range(counts[persona]):
                hot_buyer(journey(persona), followed=n not in misses)
        else:
            for _ in range(counts[persona]):
                SINGLE[persona](journey(persona))
    visitors = []
    for _ in range(round(leads * ANONYMOUS_SHARE)):
        j = Journey(world, "anonymous", None, ids.anonymous())
        anonymous(j)
        journeys.append(j)
        visitors.append(j.anonymous_id or "")

    # (time, sequence, schema, record): the sequence keeps a journey's own order among equal times
    timed: list[tuple[int, int, str, dict[str, Any]]] = []
    planned: dict[str, PlannedLead] = {}
    for j in journeys:  # anchors are placed before their members: champions are created first
        start = _place(j, rng, start_ms, end_ms)
        base = len(timed)
        for n, (rel, schema, record) in enumerate(j.events):
            at = start + rel
            if at > end_ms:
                break  # the rest of this journey is in the future
            record["event_time"] = at
            timed.append((at, base + n, schema, record))
        if j.lead_id is not None:
            planned[j.lead_id] = _planned(j, start, end_ms)
    timed.sort()  # never compares records: (time, sequence) is unique
    sla_misses = frozenset(
        i
        for i, lead in planned.items()
        if lead.hot
        and lead.followed_at is None
        and lead.mql_at is not None
        and lead.mql_at + (HOUR_MS if lead.immediate else DAY_MS) <= end_ms
    )
    return TrafficPlan(
        seed,
        start_ms,
        end_ms,
        [(s, r) for _, _, s, r in timed],
        planned,
        tuple(visitors),
        catalogue,
        sla_misses,
    )


def _place(j: Journey, rng: random.Random, start_ms: int, end_ms: int) -> int:
    """Journey start: what must happen before the end does; committee members start near their champion."""
    must_fit = max(j.must_fit, j.identified_at or 0)
    latest = max(start_ms, end_ms - must_fit)
    if j.anchor is not None:
        spread = int(rng.uniform(-6, 12) * HOUR_MS * j.world.scale)
        j.start = min(max(start_ms, j.anchor.start + spread), latest)
    else:
        j.start = start_ms + int(rng.random() * j.window * (latest - start_ms))
    return j.start


def _planned(j: Journey, start: int, end_ms: int) -> PlannedLead:
    assert j.lead_id is not None
    identified = start + (j.identified_at or 0)
    domain = next((r.get("company_domain") for _, s, r in j.events if s == "lead_identified"), None)
    mql_id = mql_at = followed = None
    if j.mql is not None and start + j.mql[0] <= end_ms:
        mql_at, mql_id = start + j.mql[0], j.mql[1]
    if j.follow_up_at is not None and start + j.follow_up_at <= end_ms:
        followed = start + j.follow_up_at
    return PlannedLead(
        j.lead_id,
        j.persona,
        domain,
        j.anonymous_id,
        identified,
        mql_id,
        mql_at,
        bool(j.mql and j.mql[2]),
        followed,
        j.outcome,
    )


# --- shell: publishing -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishStats:
    sent: int
    elapsed_s: float
    complete: bool  # False when --duration stopped it before the end of the plan


def publish(
    plan: TrafficPlan | Iterable[Event],
    sink: Sink,
    rate: float | None = None,
    duration_s: float | None = None,
    *,
    live: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> PublishStats:
    """Send every event to ``sink(schema, record)`` in plan order, at most ``rate`` events/s, for at most
    ``duration_s`` seconds. ``live`` re-stamps ``event_time`` with the wall clock as each event is sent (order
    kept, the plan's spacing not). ``clock``/``sleep``/``wall_ms`` are injectable so tests need no real time.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    events = plan.events if isinstance(plan, TrafficPlan) else plan
    began = clock()
    sent = 0
    for schema, record in events:
        now = clock()
        if duration_s is not None and now - began >= duration_s:
            return PublishStats(sent, now - began, False)
        if rate is not None:
            ahead = began + sent / rate - now
            if ahead > 0:
                if duration_s is not None and now + ahead - began >= duration_s:
                    sleep(max(0.0, began + duration_s - now))
                    return PublishStats(sent, clock() - began, False)
                sleep(ahead)
        sink(schema, {**record, "event_time": wall_ms()} if live else record)
        sent += 1
    return PublishStats(sent, clock() - began, True)


def jsonl_line(schema: str, record: dict[str, Any]) -> str:
    """One history line, the format ``leadpulse rescore`` reads: ``{"type": schema, ...fields}``."""
    return json.dumps({"type": schema, **record}, separators=(",", ":"), ensure_ascii=False)


def jsonl_lines(events: Iterable[Event]) -> Iterator[str]:
    for schema, record in events:
        yield jsonl_line(schema, record)


__all__ = [
    "DEFAULT_SPAN_MS",
    "MINUTE_MS",
    "PERSONAS",
    "PlannedLead",
    "PublishStats",
    "TrafficPlan",
    "jsonl_line",
    "jsonl_lines",
    "plan_traffic",
    "publish",
    "quotas",
]
