"""SLA clocks (DESIGN §4): started on event time, kept as durable deadlines in the lead's state, fired by a
periodic scan against the wall clock, each level exactly once.

Why deadlines in state rather than window callbacks: Faust loses window-close callbacks on rebalance; a
deadline in
the lead's table row survives restarts and moves with the partition. The ``fired`` list in the timer is what
makes
"once" hold across scans, restarts and state round trips.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from agents.rules import DAY_MS, HOUR_MS, Rules
from agents.state import MAX_FOLLOW_UPS, LeadState, SlaTimer

FOLLOW_UP = "hot_lead_follow_up"
REJECTION_FEEDBACK = "rejection_feedback"
WARNING = "warning"
BREACH = "breach"

# activities that count as sales following up a hot lead
FOLLOW_UP_ACTIVITIES = frozenset(
    {
        "first_touch",
        "accepted",
        "rejected",
        "meeting_booked",
        "opportunity_created",
        "closed_won",
        "closed_lost",
    }
)


@dataclass(frozen=True, slots=True)
class Firing:
    sla: str
    level: str
    timer: SlaTimer
    notify: tuple[str, ...]

    @property
    def timeout_id(self) -> str:
        return f"{self.timer.sla}:{self.level}:{self.timer.started_at}"


def follow_up_ms(segment: str | None, immediate: bool, rules: Rules) -> int:
    """Follow-up deadline length: per-segment override, else the default; direct inquiries get the short
    one."""
    spec = rules.sla.segments.get(segment or "", rules.sla.hot_lead_follow_up)
    return int((spec.immediate_hours if immediate else spec.hours) * HOUR_MS)


def start_follow_up(state: LeadState, at: int, immediate: bool, rules: Rules) -> SlaTimer:
    segment = state.profile.get("segment")
    timer = SlaTimer(FOLLOW_UP, at, at + follow_up_ms(segment, immediate, rules), state.owner)
    state.timers[FOLLOW_UP] = timer
    return timer


def record_follow_up(state: LeadState, at: int, keep_from: int) -> None:
    """Remember a follow-up's event time for an MQL read after it (``first_answer``). ``keep_from``: times
    before it can only answer a late MQL, which has no clock (the newest event's time minus the late window);
    they are dropped, and beyond ``MAX_FOLLOW_UPS`` the oldest."""
    times = state.follow_ups
    if at >= keep_from and at not in times:
        bisect.insort(times, at)
    if times and (times[0] < keep_from or len(times) > MAX_FOLLOW_UPS):
        state.follow_ups = [t for t in times if t >= keep_from][-MAX_FOLLOW_UPS:]


def first_answer(state: LeadState, started_at: int) -> int | None:
    """Event time of the first follow-up known at or after ``started_at`` (None = none yet): the one that
    answers a clock started then, even if it was read before the MQL (another topic). A follow-up before
    the start does not answer it."""
    times = state.follow_ups
    i = bisect.bisect_left(times, started_at)
    return times[i] if i < len(times) else None


def start_rejection_feedback(state: LeadState, at: int, rules: Rules) -> SlaTimer:
    timer = SlaTimer(
        REJECTION_FEEDBACK, at, at + int(rules.sla.rejection_feedback_days * DAY_MS), state.owner
    )
    state.timers[REJECTION_FEEDBACK] = timer
    return timer


def stop_at(state: LeadState, sla: str, at: int, rules: Rules) -> list[Firing]:
    """Stop a clock answered (or ended) at event time ``at``; the levels that fell due before ``at`` and
    have not fired yet fire now.

    Why: whether an answer came in time is a fact of event times. Stopping silently would let the same
    follow-up, 2 h after a 1 h deadline, breach or not depending on whether a timer scan ran between the
    two records (a burst, a backlog or a replay has none). An answer exactly at the due time is in time."""
    firings = due_firings(state, rules, at - 1, only=sla) if sla in state.timers else []
    state.timers.pop(sla, None)
    return firings


def level_times(timer: SlaTimer, rules: Rules) -> list[tuple[str, int]]:
    """When each level of a timer is due. Follow-up: warning at the configured fraction, then breach;
    rejection feedback: breach only."""
    if timer.sla == REJECTION_FEEDBACK:
        return [(BREACH, timer.due_at)]
    warn_at = timer.started_at + int((timer.due_at - timer.started_at) * rules.sla.warning_fraction)
    return [(WARNING, warn_at), (BREACH, timer.due_at)]


def due_firings(state: LeadState, rules: Rules, now_ms: int, only: str | None = None) -> list[Firing]:
    """Levels due at ``now_ms`` and not fired yet (of timer ``only``, else of all); marks them fired in
    ``state`` (so each fires once)."""
    firings: list[Firing] = []
    names = sorted(state.timers) if only is None else [only]
    for name in names:
        timer = state.timers[name]
        for level, at in level_times(timer, rules):
            if at <= now_ms and level not in timer.fired:
                timer.fired.append(level)
                ladder = rules.sla.escalation
                notify = ladder.warning if level == WARNING else ladder.breach
                firings.append(Firing(name, level, timer, tuple(notify)))
    return firings


_TIMED_STAGES = frozenset({"mql", "customer", "expansion"})  # stages with a timed recycle


def next_due(state: LeadState, rules: Rules) -> int | None:
    """Earliest wall-clock time a timer level or a recycle falls due, so a scan can skip quiet leads."""
    if not state.timers and state.stage not in _TIMED_STAGES:  # most leads: asked once per batch written
        return None
    times = [at for t in state.timers.values() for level, at in level_times(t, rules) if level not in t.fired]
    if state.stage == "mql" and state.mql_at is not None:
        times.append(state.mql_at + int(rules.recycle.mql_not_accepted_days * DAY_MS))
    if state.stage in ("customer", "expansion"):
        times.append(dormant_since(state) + int(rules.recycle.dormant_customer_days * DAY_MS))
    return min(times) if times else None


def dormant_since(state: LeadState) -> int:
    """Last sign of sales follow-up for a customer: the newer of its last sales activity and becoming
    customer."""
    return max(state.last_sales_at or state.stage_at, state.stage_at)
