"""Everything the agent remembers about one identity key (a lead_id, or an anonymous_id before stitching).

Why one small record per key: it is stored in one Faust table and written once per lead per batch (each write
is also a changelog record), so everything the core needs lives here and every growing part is bounded:

- ``seen`` (event id -> event time) keeps ids whose event time is within ``state.dedup_window_days`` of the
  newest event, at most ``state.max_seen_ids``. Events older than ``dedup_floor()`` are not scored at all
  ("stale"), so a duplicate can never score twice: either its id is still remembered, or it is below the
  floor. The price: an event arriving more than the window behind the lead's newest event (default 30 days)
  is ignored.
- ``views`` (page view and item -> newest report time) keeps the page views already scored
  (``scoring.repeated_view``) for the same window, at most ``state.max_seen_ids`` of them (the least
  recently reported go first). Apart from ``seen``, so views never take the room of event ids, and a view
  still being reported is not forgotten.
- ``caps`` keeps, per rule and event-time UTC day, the (time, id) of the events that scored, only for days
  inside the same window.
- ``signals`` keeps the ``state.top_signals`` largest contributions; ``buffer`` (anonymous keys only) keeps
  at most ``state.anonymous_buffer`` raw events for stitching; ``aliases`` at most ``MAX_ALIASES``.

Behaviour is kept as one exponentially decayed accumulator per rule: ``acc[rule] = [value, ref_ms]`` meaning
the rule's points summed and decayed to ``ref_ms``. Because value(t) = value(t0)·2^(-(t-t0)/h) for any t,
adding an event before or after ``ref_ms`` is exact, so out-of-order events give the same sum as in-order
ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import orjson

MAX_ALIASES = 20
MAX_FOLLOW_UPS = 20  # follow-up times kept for MQLs read after them (agents/sla.py, record_follow_up)
NEVER = -(2**62)  # "no time yet"; an int so arithmetic and JSON stay simple

Signal = list[Any]  # [rule, event_type, event_id, event_time, points, detail]


@dataclass(slots=True)
class SlaTimer:
    """A running SLA clock: started on event time, fired by wall clock; ``fired`` lists levels already
    sent."""

    sla: str
    started_at: int
    due_at: int
    owner: str | None = None
    fired: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sla": self.sla,
            "started_at": self.started_at,
            "due_at": self.due_at,
            "owner": self.owner,
            "fired": list(self.fired),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlaTimer:
        return cls(
            data["sla"],
            int(data["started_at"]),
            int(data["due_at"]),
            data.get("owner"),
            list(data.get("fired", [])),
        )


@dataclass(slots=True)
class LeadState:
    key: str
    lead_id: str | None = None
    aliases: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    profile_at: int = NEVER  # event time of the profile in use (newest by event time wins)
    profile_event_id: str = ""
    fit: float = 0.0
    disqualified_by: str | None = None
    acc: dict[str, list[float]] = field(default_factory=dict)
    behaviour_since: int = NEVER  # recycles reset behaviour: events before this time no longer score
    caps: dict[str, list[list[Any]]] = field(default_factory=dict)  # "rule|day" -> [[time, event_id], ...]
    stage: str = "awareness"
    stage_at: int = NEVER
    seq: int = 0
    mql_at: int | None = None
    last_sales_at: int | None = None
    # newest event time of a follow-up activity (first_touch/accepted/rejected/...)
    last_follow_up_at: int | None = None
    # event times of the follow-up activities an MQL not read yet could still be answered by, sorted: one
    # that arrives before the MQL event it follows up (another topic, no cross-topic order) must be judged
    # as if read after it (sla.first_answer). Bounded: only times within the late window of the newest event
    # (an older MQL is late and starts no clock), at most MAX_FOLLOW_UPS.
    follow_ups: list[int] = field(default_factory=list)
    owner: str | None = None
    timers: dict[str, SlaTimer] = field(default_factory=dict)
    signals: list[Signal] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    evicted_to: int = NEVER  # newest event time ever evicted from ``seen`` by the count bound
    views: dict[str, int] = field(default_factory=dict)  # page view + item -> newest report time
    max_time: int = NEVER
    last_score: float = 0.0
    last_as_of: int = NEVER
    merged_into: str | None = None
    buffer: list[list[Any]] = field(default_factory=list)  # anonymous only: [[schema, event], ...]
    # Not in the changelog: whether ``buffer`` may hold a NaN/inf double (None = not known, scanned at the
    # next write), so a write does not rescan every buffered event (~2% of the worker's CPU under live
    # load). Rule: code that adds to ``buffer`` goes through ``identity.buffer_event`` (which keeps it
    # accurate) or sets it to None.
    non_finite: bool | None = field(default=None, compare=False, repr=False)

    @property
    def is_lead(self) -> bool:
        return self.lead_id is not None

    def dedup_floor(self, window_ms: int) -> int:
        """Events with event_time below this are stale: their ids may have been forgotten."""
        if self.max_time == NEVER:
            return self.evicted_to
        return max(self.max_time - window_ms, self.evicted_to)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (keys kept short to keep table and changelog records small)."""
        return {
            "key": self.key,
            "lead_id": self.lead_id,
            "aliases": self.aliases,
            "profile": self.profile,
            "profile_at": self.profile_at,
            "profile_event_id": self.profile_event_id,
            "fit": self.fit,
            "dq": self.disqualified_by,
            "acc": self.acc,
            "since": self.behaviour_since,
            "caps": self.caps,
            "stage": self.stage,
            "stage_at": self.stage_at,
            "seq": self.seq,
            "mql_at": self.mql_at,
            "last_sales_at": self.last_sales_at,
            "last_follow_up_at": self.last_follow_up_at,
            "follow_ups": self.follow_ups,
            "owner": self.owner,
            "timers": {k: t.to_dict() for k, t in self.timers.items()},
            "signals": self.signals,
            "seen": self.seen,
            "evicted_to": self.evicted_to,
            "views": self.views,
            "max_time": self.max_time,
            "last_score": self.last_score,
            "last_as_of": self.last_as_of,
            "merged_into": self.merged_into,
            "buffer": self.buffer,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LeadState:
        return cls(
            key=d["key"],
            lead_id=d.get("lead_id"),
            aliases=list(d.get("aliases", [])),
            profile=dict(d.get("profile", {})),
            profile_at=int(d.get("profile_at", NEVER)),
            profile_event_id=d.get("profile_event_id", ""),
            fit=float(d.get("fit", 0.0)),
            disqualified_by=d.get("dq"),
            acc={k: [float(v[0]), float(v[1])] for k, v in d.get("acc", {}).items()},
            behaviour_since=int(d.get("since", NEVER)),
            caps={k: [list(x) for x in v] for k, v in d.get("caps", {}).items()},
            stage=d.get("stage", "awareness"),
            stage_at=int(d.get("stage_at", NEVER)),
            seq=int(d.get("seq", 0)),
            mql_at=d.get("mql_at"),
            last_sales_at=d.get("last_sales_at"),
            last_follow_up_at=d.get("last_follow_up_at"),
            # a state written before the list: its newest follow-up is the one known
            follow_ups=[int(t) for t in d.get("follow_ups", _newest(d.get("last_follow_up_at")))],
            owner=d.get("owner"),
            timers={k: SlaTimer.from_dict(t) for k, t in d.get("timers", {}).items()},
            signals=[list(s) for s in d.get("signals", [])],
            seen=dict(d.get("seen", {})),
            evicted_to=int(d.get("evicted_to", NEVER)),
            views={k: int(t) for k, t in d.get("views", {}).items()},
            max_time=int(d.get("max_time", NEVER)),
            last_score=float(d.get("last_score", 0.0)),
            last_as_of=int(d.get("last_as_of", NEVER)),
            merged_into=d.get("merged_into"),
            buffer=[list(b) for b in d.get("buffer", [])],
        )

    def to_bytes(self) -> bytes:
        """Compact JSON (orjson: the same bytes as ``json.dumps`` with tight separators for this data, ~7x
        faster; the state write was the worker's largest cost after the core, docs/benchmarks.md)."""
        data = self.to_dict()
        if self.buffer:
            if self.non_finite is None:
                self.non_finite = _non_finite(self.buffer)
            if self.non_finite:  # orjson would write NaN/inf as null
                return json.dumps(data, separators=(",", ":")).encode("utf-8")
        return orjson.dumps(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> LeadState:
        try:
            state = cls.from_dict(orjson.loads(data))
        except orjson.JSONDecodeError:  # NaN/inf in a buffered event (written by json, see to_bytes)
            return cls.from_dict(json.loads(data))
        state.non_finite = False  # orjson parses no NaN/Infinity: none was written
        return state


def _newest(last_follow_up_at: int | None) -> list[int]:
    return [] if last_follow_up_at is None else [int(last_follow_up_at)]


def _non_finite(buffer: list[list[Any]]) -> bool:
    return any(has_non_finite(event) for _schema, event in buffer)


def has_non_finite(event: dict[str, Any]) -> bool:
    """A raw event with a NaN or infinite double, which orjson would write as null (Avro allows them; the
    collector rejects them, a producer writing Avro straight to the topic may not). Input doubles are
    top-level fields only, so the event's values are enough."""
    return any(type(v) is float and not math.isfinite(v) for v in event.values())


def remember(state: LeadState, event_id: str, event_time: int, window_ms: int, max_ids: int) -> None:
    """Record a scored event id; prune by window and count in amortised batches (not on every event)."""
    seen = state.seen
    seen[event_id] = event_time
    if len(seen) <= max_ids + max_ids // 4:
        return
    floor = state.dedup_floor(window_ms)
    kept = sorted(((t, i) for i, t in seen.items() if t >= floor), reverse=True)
    if len(kept) > max_ids:
        state.evicted_to = max(state.evicted_to, kept[max_ids][0] + 1)
        kept = kept[:max_ids]
    state.seen = {i: t for t, i in kept}


def remember_view(state: LeadState, view: str, report_time: int, max_views: int) -> bool:
    """Record a page view's report; whether the view was known already. A view keeps its newest report's
    time (so one still being reported is not the first to go); the count is pruned as ``remember`` prunes
    the seen ids, in amortised batches, the least recently reported first (the window: ``prune_window``)."""
    views = state.views
    reported = views.get(view)
    if reported is not None:
        if report_time > reported:
            views[view] = report_time
        return True
    views[view] = report_time
    if len(views) > max_views + max_views // 4:
        state.views = dict(sorted(views.items(), key=itemgetter(1))[-max_views:])
    return False


def prune_window(state: LeadState, window_ms: int) -> None:
    """Drop seen ids, page views, cap buckets and buffered anonymous events older than the dedup window
    (called when the lead's newest event time enters a new day). Without the seen ids here, a lead with fewer
    than ``max_seen_ids`` events kept every id forever: the soak test measured 886k ids for 1M events where
    the 30-day window holds ~330k (issue #8, bounded state)."""
    floor = state.dedup_floor(window_ms)
    floor_day = floor // 86_400_000
    if state.seen and min(state.seen.values()) < floor:  # usually nothing has left the window yet
        state.seen = {i: t for i, t in state.seen.items() if t >= floor}
    # views by the window alone: the seen ids' eviction floor says nothing about when a page was last read
    window_floor = state.max_time - window_ms
    if state.views and min(state.views.values()) < window_floor:
        state.views = {k: t for k, t in state.views.items() if t >= window_floor}
    if state.caps:
        state.caps = {k: v for k, v in state.caps.items() if int(k.rsplit("|", 1)[1]) >= floor_day}
    if state.buffer:
        state.buffer = [b for b in state.buffer if int(b[1]["event_time"]) >= floor]
