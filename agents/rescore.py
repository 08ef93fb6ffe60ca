"""Safe re-scoring (DESIGN §3): replay history through the pure core with the old and the new rules and list
who would change stage or score band, without emitting anything.

Why replay the real core instead of re-computing scores: stages depend on the order of events, sales
activities, recycles and timers; only the same ``step``/``check_timers`` the worker runs gives the answer the
worker would give. Both runs see the same events in the same order and the same ``now_ms``.

History file format (JSONL, one event per line): ``{"type": "<schema name>", ...the event's fields}``, e.g.
``{"type": "web_visit", "event_id": "e1", "event_time": "2025-01-01T10:00:00Z", "lead_id": "L1", ...}``.
The wrapped form ``{"schema": "<schema name>", "record": {...}}`` is accepted too (what a topic dump gives).
Fields are validated and normalised against ``schemas/<schema>.avsc`` (ISO timestamps become epoch ms).
"""

from __future__ import annotations

import difflib
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agents.core import check_timers, step
from agents.rescore_history import CompactHistory
from agents.rules import Rules
from agents.scoring import band, behaviour_at
from agents.state import LeadState
from schemas.errors import SchemaValidationError
from schemas.registry import SchemaRegistry, default_registry
from streams.event_hygiene import InadmissibleEvent, check_admissible

INPUT_SCHEMAS = ("web_visit", "email_click", "download", "content_view", "lead_identified", "sales_activity")
Event = tuple[str, dict[str, Any]]


class HistoryError(Exception):
    """A history line is not usable; the message names the file, the line number and the field."""


@dataclass(frozen=True, slots=True)
class LeadOutcome:
    stage: str
    score: float
    band: str


@dataclass(frozen=True, slots=True)
class Change:
    lead_id: str
    old_stage: str
    new_stage: str
    old_score: float
    new_score: float
    old_band: str
    new_band: str

    @property
    def delta(self) -> float:
        return self.new_score - self.old_score

    @property
    def stage_changed(self) -> bool:
        return self.old_stage != self.new_stage


@dataclass(frozen=True, slots=True)
class RescoreReport:
    events: int
    leads: int
    changes: list[Change]  # leads whose stage or band differs, largest |delta| first
    # category rules of the new file no event of the history matched (unmatched_rules below): a typo in a
    # free-text key (page_category.pricng) scores nothing and no validation can know the category list
    unmatched_rules: tuple[str, ...] = ()
    likely_typos: dict[str, LikelyTypo] = field(default_factory=dict)
    after_now: int = 0  # events with an event_time after now_ms, left out of both replays

    @property
    def stage_changes(self) -> int:
        return sum(1 for c in self.changes if c.stage_changed)

    @property
    def band_changes(self) -> int:
        return sum(1 for c in self.changes if c.old_band != c.new_band)

    def moves(self, kind: str) -> dict[str, int]:
        """How many leads make each move (``"nurturing -> mql": 3``), ``kind`` = stage or band; most first."""
        counts = Counter(
            f"{getattr(c, f'old_{kind}')} -> {getattr(c, f'new_{kind}')}"
            for c in self.changes
            if getattr(c, f"old_{kind}") != getattr(c, f"new_{kind}")
        )
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "after_now": self.after_now,
            "leads": self.leads,
            "stage_changes": self.stage_changes,
            "band_changes": self.band_changes,
            "stage_moves": self.moves("stage"),
            "band_moves": self.moves("band"),
            "changes": [{**asdict(c), "delta": c.delta} for c in self.changes],
            "unmatched_rules": list(self.unmatched_rules),
            "likely_typos": {name: asdict(typo) for name, typo in self.likely_typos.items()},
        }


def _key(event: dict[str, Any]) -> str:
    return str(event.get("lead_id") or event.get("anonymous_id"))


def replay(events: Iterable[Event], rules: Rules, now_ms: int) -> dict[str, LeadState]:
    """Final state per identity key after every event (and every forward it causes) and a last timer scan at
    ``now_ms``.

    Timers also fire during the replay, as the worker's periodic scan fired them while the history happened:
    before a key takes an event, its due timers run with the clock at the newest event time so far (never
    past ``now_ms``). A single scan at the end recycled an MQL nobody accepted only after every later event
    (an ``accepted`` on day 20 of a 14-day window counted as accepted in time, and the recycle's reset wiped
    the behaviour that came after it), so a change of ``recycle.mql_not_accepted_days`` showed no effect."""
    states: dict[str, LeadState] = {}
    clock = 0
    for schema, event in events:
        clock = min(max(clock, int(event.get("event_time") or 0)), now_ms)
        queue = deque([(_key(event), schema, event)])
        while queue:
            key, schema_, event_ = queue.popleft()
            state = states.get(key)
            if state is not None:
                check_timers(state, rules, clock)  # updates the state in place, like the worker's scan
            result = step(state, key, schema_, event_, rules, now_ms)
            states[key] = result.state
            queue.extend((f.key, f.schema, f.event) for f in result.forwards)
    for state in states.values():
        check_timers(state, rules, now_ms)
    return states


def outcomes(states: dict[str, LeadState], rules: Rules) -> dict[str, LeadOutcome]:
    result: dict[str, LeadOutcome] = {}
    for state in states.values():
        if state.lead_id is None:
            continue
        score = state.fit + behaviour_at(state, rules, state.max_time)
        result[state.lead_id] = LeadOutcome(state.stage, score, band(score, rules, state.stage))
    return result


def rescore(events: Iterable[Event], old: Rules, new: Rules, now_ms: int) -> RescoreReport:
    """Who changes stage or score band when ``new`` replaces ``old``; nothing is emitted anywhere.

    The history is replayed in event-time order (stable: equal times keep their order), as the worker applies
    a backlog: a file in another order (per-type exports concatenated) replayed a rep's ``rejected`` before
    the demo request it answered and reported a "before" stage the worker never reaches.

    Only events up to ``now_ms`` are replayed (counted in ``after_now``): "as of --now" means as the leads
    stood then. Replayed, a later event was scored with its clock clamped to ``now_ms``, so a history running
    past ``--now`` reported stages nobody had at that time.

    Memory: the history is held as Avro bytes (``CompactHistory``; a ``read_history`` file already is) and
    decoded event by event, once per replay; the rule hits are counted during the second replay. Holding it
    as decoded dicts (~0.9-1.5 KB an event) did not fit months of topics. The replays run one after the
    other, not side by side: one pass would decode each event once, but hold both replays' lead states at
    the same time, more memory than a second decode costs time (docs/benchmarks.md, "Rescore memory")."""
    history = events if isinstance(events, CompactHistory) else CompactHistory(events)
    order = history.time_order(now_ms)
    before = outcomes(replay(history.at(order), old, now_ms), old)
    hits = RuleHits(new)  # counted during the second replay: no list of events is kept for it
    after = outcomes(replay(hits.counting(history.at(order)), new, now_ms), new)
    changes = []
    for lead_id in sorted(before.keys() | after.keys()):
        a = before.get(lead_id, LeadOutcome("awareness", 0.0, "cold"))
        b = after.get(lead_id, LeadOutcome("awareness", 0.0, "cold"))
        if a.stage != b.stage or a.band != b.band:
            changes.append(Change(lead_id, a.stage, b.stage, a.score, b.score, a.band, b.band))
    changes.sort(key=lambda c: (-abs(c.delta), c.lead_id))
    unmatched, typos = hits.result()
    return RescoreReport(len(order), len(after), changes, unmatched, typos, len(history) - len(order))


def drop_erased(history: CompactHistory, is_erased: Callable[[str | None], bool]) -> int:
    """Leave out, in place, the records of erased identities; returns how many went.

    The predicate is the sink's and ``replay``'s (``streams.erasures.record_erased``): a history file is read
    as the input topics are (DESIGN §10, a replay does not bring an erased lead back). Imported here, not at
    the top: it brings the Kafka clients, which the pure replay does not need."""
    from streams.erasures import record_erased

    return history.drop(lambda schema, record: record_erased(schema, record, is_erased))


#: The event and field a category table keys on (``email_link`` matches inside ``link_url``: no value to
#: compare).
#: ``event_type`` rules are not here: their keys are checked when the rules load, and a fallback that every
#: event of its type bypasses (all downloads have a named asset type) is no mistake.
RULE_TABLE_FIELD: dict[str, tuple[str, str | None]] = {
    "page_category": ("web_visit", "page_category"),
    "asset_type": ("download", "asset_type"),
    "content_type": ("content_view", "content_type"),
    "email_link": ("email_click", None),
}


@dataclass(frozen=True, slots=True)
class LikelyTypo:
    """A category rule that matched nothing while ``events`` events carry ``value``, close to its key and
    named by no rule of the table: ``page_category.pricng`` beside 40 visits of ``pricing``."""

    value: str
    events: int


def unmatched_rules(history: Iterable[Event], rules: Rules) -> tuple[tuple[str, ...], dict[str, LikelyTypo]]:
    """Category rules (``table.key``) no event of ``history`` matches, by the worker's own lookup, and which
    of them look like a typo of a value the history holds that no rule names. Only tables whose event type
    the history holds (a history without downloads tells nothing of asset_type rules)."""
    hits = RuleHits(rules)
    for schema, event in history:
        hits.add(schema, event)
    return hits.result()


class RuleHits:
    """What ``unmatched_rules`` needs of a history, counted an event at a time (``add``): the rules matched,
    the event types seen and, per table, the values no rule names. ``rescore`` counts them during its replay
    instead of keeping the history's events for a second pass."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.matched: set[str] = set()
        self.schemas: set[str] = set()
        self.unnamed: dict[str, Counter[str]] = {table: Counter() for table in RULE_TABLE_FIELD}
        self._fields = {schema: (table, name) for table, (schema, name) in RULE_TABLE_FIELD.items() if name}

    def add(self, schema: str, event: dict[str, Any]) -> None:
        self.schemas.add(schema)
        rule = self.rules.match(schema, event)
        if rule is not None:
            self.matched.add(rule.name)
        table_field = self._fields.get(schema)
        if table_field and (rule is None or rule.name.startswith("event_type.")):
            value = event.get(table_field[1])
            if value:
                self.unnamed[table_field[0]][str(value)] += 1

    def counting(self, events: Iterable[Event]) -> Iterator[Event]:
        """``events``, each ``add``-ed as it passes."""
        for schema, event in events:
            self.add(schema, event)
            yield schema, event

    def result(self) -> tuple[tuple[str, ...], dict[str, LikelyTypo]]:
        names = {
            name
            for name in self.rules.compiled.by_name
            if RULE_TABLE_FIELD.get(name.partition(".")[0], ("",))[0] in self.schemas
        }
        unmatched = tuple(sorted(names - self.matched))
        typos: dict[str, LikelyTypo] = {}
        for name in unmatched:
            table, _, key = name.partition(".")
            by_lower = {value.lower(): value for value in self.unnamed[table]}
            close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.8)
            if close:
                value = by_lower[close[0]]
                typos[name] = LikelyTypo(value, self.unnamed[table][value])
        return unmatched, typos


#: Bad history lines named in the error; a file with more says how many others there are.
SHOWN_BAD_LINES = 10


def read_history(path: Path) -> CompactHistory:
    """Events of a JSONL history file, validated against their schemas (see the module docstring), held as
    a ``CompactHistory`` (iterating it gives them back in file order).

    Every line is checked before any is replayed, and the error names each bad line (up to
    ``SHOWN_BAD_LINES``): fixing a file one line per run was the only way before."""
    registry = default_registry()
    events = CompactHistory(registry=registry)
    problems: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                events.append(_history_event(registry, line))
            except HistoryError as exc:
                problems.append(f"{path}:{lineno}: {exc}")
    if problems:
        shown = problems[:SHOWN_BAD_LINES]
        more = len(problems) - len(shown)
        raise HistoryError(
            f"{len(problems)} bad line(s) in {path}; nothing was replayed:\n  "
            + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more else "")
        )
    return events


def _history_event(registry: SchemaRegistry, line: str) -> Event:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise HistoryError(f"not JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise HistoryError("expected a JSON object")
    if "schema" in doc and "record" in doc:
        schema, fields = doc["schema"], doc["record"]
    else:
        fields = dict(doc)
        schema = fields.pop("type", None)
    if schema not in INPUT_SCHEMAS:
        raise HistoryError(f"type: expected one of {', '.join(INPUT_SCHEMAS)}, got {schema!r}")
    try:
        record = registry.validate(schema, fields)
        # what the worker would dead-letter is not history (DESIGN §3, §6)
        check_admissible(record, int(time.time() * 1000))
    except (SchemaValidationError, InadmissibleEvent) as exc:
        raise HistoryError(str(exc)) from None
    return schema, record
