"""The pure heart of the lead agent: one event in, the updated state and the records to emit out.

``step`` reads as the pipeline of DESIGN §3/STYLE: dedup → stitch → score → stage → SLA → emit, each a small
named function. ``check_timers`` is the periodic scan (SLA levels and recycles by wall clock).

Why ``step`` updates the state in place and returns it: copying a lead's state per event would cost more
than the
scoring itself (the agent must run >15k events/s). The caller hands the state over and stores what comes back.
No I/O and no clock here: ``now_ms`` only stamps ``computed_at``/``fired_at`` and drives timers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents import identity, scoring, sla, stages
from agents.identity import ALIAS_SCHEMA, Forward
from agents.outputs import Output, hot_lead_output, timeout_output, transition_output
from agents.rules import DAY_MS, Rules
from agents.rules_sections import EVENT_TYPES
from agents.stages import RECYCLED, Transition
from agents.state import NEVER, LeadState, SlaTimer, prune_window, remember

BEHAVIOURAL = frozenset(EVENT_TYPES)
PROFILE_FIELDS = (
    "email",
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
)
SCORE_EPSILON = 0.005  # smaller moves (decay over minutes, a capped event) are not a "score change"


@dataclass(slots=True, init=False)
class StepResult:
    state: LeadState
    outputs: list[Output]
    forwards: list[Forward]
    dropped: str | None  # duplicate | stale | foreign_lead; None = processed or forwarded
    changed: bool  # False = state untouched, no need to write it back

    # Hand-written __init__s here and in _Run: a dataclass's default_factory fields cost ~0.5 us per object,
    # and both are built once per event (the worker's budget is ~60 us per event, docs/benchmarks.md).
    def __init__(
        self,
        state: LeadState,
        outputs: list[Output] | None = None,
        forwards: list[Forward] | None = None,
        dropped: str | None = None,
        changed: bool = True,
    ) -> None:
        self.state = state
        self.outputs = [] if outputs is None else outputs
        self.forwards = [] if forwards is None else forwards
        self.dropped = dropped
        self.changed = changed


@dataclass(slots=True, init=False)
class _Run:
    """Scratch of one step: what happened, to be emitted at the end with the final score."""

    state: LeadState
    rules: Rules
    trigger: str
    t: int
    late: bool
    transitions: list[Transition]
    hot: list[tuple[Transition, str, SlaTimer | None]]
    why: list[str]
    forwards: list[Forward]
    timeouts: list[sla.Firing]  # SLA levels that fell due before the event that stopped their clock
    delta: float  # behaviour change as of the newest event time, so the sum is not recomputed
    reset: bool  # behaviour was reset (recycle): recompute instead of adding ``delta``

    def __init__(self, state: LeadState, rules: Rules, trigger: str, t: int, late: bool) -> None:
        self.state, self.rules, self.trigger, self.t, self.late = state, rules, trigger, t, late
        self.transitions = []
        self.hot = []
        self.why = []
        self.forwards = []
        self.timeouts = []
        self.delta = 0.0
        self.reset = False

    def stop_clock(self, name: str, at: int) -> None:
        self.timeouts.extend(sla.stop_at(self.state, name, at, self.rules))

    def move(self, to_stage: str, reason: str, at: int) -> Transition:
        state = self.state
        left = state.stage
        tr = stages.move(state, to_stage, reason, self.trigger, at)
        self.transitions.append(tr)
        if left == "mql":
            self.stop_clock(sla.FOLLOW_UP, at)
        if reason == RECYCLED:
            scoring.reset_behaviour(state, tr.occurred_at)
            self.reset = True
            self.why.append(f"{reason} ({stages.recycle_cause(left, self.trigger)}): behaviour reset")
        return tr


def new_state(key: str, schema: str, event: dict[str, Any]) -> LeadState:
    """A lead state when the key is the event's lead_id, else an anonymous one (keyed by anonymous_id)."""
    return LeadState(key=key, lead_id=key if event.get("lead_id") == key else None)


def step(
    state: LeadState | None,
    key: str,
    schema: str,
    event: dict[str, Any],
    rules: Rules,
    now_ms: int,
    received_ms: int | None = None,
) -> StepResult:
    """One input event for identity ``key``: dedup → stitch → score → stage → SLA → emit.

    ``state`` is consumed (updated in place); store the returned ``result.state``. On an anonymous key an
    alias instruction is a ``lead_identified`` record whose lead_id differs from the key (see identity.py).
    ``received_ms`` is when the event entered Kafka (its record timestamp), for ``rules.late_by_arrival``;
    a replay passes the stored timestamp, so it judges lateness as the first run did.
    """
    if state is None:
        state = new_state(key, schema, event)
    if state.lead_id is None:
        return _anonymous_step(state, schema, event, rules)
    if event.get("lead_id") not in (None, key):  # e.g. an alias instruction addressed to a lead key
        return StepResult(state, dropped="foreign_lead", changed=False)
    event_id = str(event["event_id"])
    t = int(event["event_time"])
    if event_id in state.seen:  # dedup
        again = identity.link(state, event) if schema == "lead_identified" else []
        return StepResult(state, forwards=again, dropped="duplicate", changed=False)
    if t < state.dedup_floor(rules.dedup_window_ms):
        return StepResult(state, dropped="stale", changed=False)
    late = (state.max_time != NEVER and t < state.max_time - rules.late_window_ms) or rules.arrived_late(
        t, received_ms
    )
    _advance_clock(state, event_id, t, rules)
    as_of = state.max_time
    behaviour_before = scoring.behaviour_at(state, rules, as_of)
    previous = state.fit + behaviour_before
    stage_before = state.stage
    run = _Run(state, rules, event_id, t, late)
    if state.stage == "awareness":
        run.move("lead", "identified", t)
    if schema == "lead_identified":  # stitch + fit + disqualification
        run.forwards.extend(identity.link(state, event))
        _apply_profile(run, event)
    elif schema == "sales_activity":
        _apply_activity(run, event)
    elif schema in BEHAVIOURAL:
        _score_event(run, schema, event)
    behaviour = scoring.behaviour_at(state, rules, as_of) if run.reset else behaviour_before + run.delta
    if stages.can_become_mql(state) and state.fit + behaviour > rules.stages.mql_threshold:
        _enter_mql(run, "score_threshold", "score_threshold", immediate=False)
    return StepResult(state, _emit(run, previous, behaviour, stage_before, now_ms), run.forwards)


def _advance_clock(state: LeadState, event_id: str, t: int, rules: Rules) -> None:
    window = rules.dedup_window_ms
    remember(state, event_id, t, window, rules.state.max_seen_ids)
    if t > state.max_time:
        crossed_day = state.max_time == NEVER or t // DAY_MS != state.max_time // DAY_MS
        state.max_time = t
        if crossed_day:
            prune_window(state, window)


def _anonymous_step(state: LeadState, schema: str, event: dict[str, Any], rules: Rules) -> StepResult:
    """Anonymous keys only collect history for a later stitch; they are not scored or staged."""
    if schema == ALIAS_SCHEMA:
        return StepResult(state, forwards=identity.apply_alias(state, event))
    forward = identity.forward_merged(state, schema, event)
    if forward is not None:
        return StepResult(state, forwards=[forward], changed=False)
    event_id = str(event["event_id"])
    t = int(event["event_time"])
    if event_id in state.seen:
        return StepResult(state, dropped="duplicate", changed=False)
    if t < state.dedup_floor(rules.dedup_window_ms):
        return StepResult(state, dropped="stale", changed=False)
    _advance_clock(state, event_id, t, rules)
    identity.buffer_event(state, schema, event, rules.state.anonymous_buffer)
    return StepResult(state)


def _apply_profile(run: _Run, event: dict[str, Any]) -> None:
    """Newest profile by event time wins (ties by event id), so profile updates commute."""
    state, rules = run.state, run.rules
    if (run.t, run.trigger) < (state.profile_at, state.profile_event_id):
        run.why.append(f"profile {run.trigger} older than the one in use: ignored")
        return
    state.profile = {k: event.get(k) for k in PROFILE_FIELDS}
    state.profile_at, state.profile_event_id = run.t, run.trigger
    if event.get("owner"):
        state.owner = event["owner"]
    fit = scoring.profile_fit(state.profile, rules)
    if fit != state.fit:
        run.why.append(f"fit {state.fit:g} -> {fit:g} (profile {run.trigger})")
        state.fit = fit
    reason = scoring.disqualification(state.profile, rules)
    if reason is not None and state.disqualified_by is None:
        state.disqualified_by = reason
        run.why.append(f"disqualified ({reason})")
        run.stop_clock(sla.FOLLOW_UP, run.t)
        if "disqualified" in stages.ALLOWED_EDGES[state.stage]:
            run.move("disqualified", f"disqualified:{reason}", run.t)
    elif reason is None and state.disqualified_by is not None:
        state.disqualified_by = None
        run.why.append("requalified")
        if state.stage == "disqualified":
            run.move("lead", "requalified", run.t)


def _apply_activity(run: _Run, event: dict[str, Any]) -> None:
    state, t = run.state, run.t
    activity = str(event["activity"])
    if event.get("owner"):
        state.owner = event["owner"]
    state.last_sales_at = t if state.last_sales_at is None else max(state.last_sales_at, t)
    follow_up = state.timers.get(sla.FOLLOW_UP)
    if activity in sla.FOLLOW_UP_ACTIVITIES:
        state.last_follow_up_at = t if state.last_follow_up_at is None else max(state.last_follow_up_at, t)
        sla.record_follow_up(state, t, state.max_time - run.rules.late_window_ms)
        if follow_up is not None and t >= follow_up.started_at:
            run.stop_clock(sla.FOLLOW_UP, t)
    if activity == "rejected":
        if (event.get("reason") or "").strip():
            run.stop_clock(sla.REJECTION_FEEDBACK, t)
        else:
            running = state.timers.get(sla.REJECTION_FEEDBACK)
            # a later rejection, once the earlier one's breach has fired, owes its own reason (audit: the
            # fired timer stayed in the state and blocked every later clock)
            if running is None or (sla.BREACH in running.fired and t > running.started_at):
                sla.start_rejection_feedback(state, t, run.rules)
    target = stages.activity_move(state.stage, activity, t, state.stage_at)
    if target is not None:
        run.move(target[0], target[1], t)


def _score_event(run: _Run, schema: str, event: dict[str, Any]) -> None:
    state, rules, t = run.state, run.rules, run.t
    rule = rules.match(schema, event)
    if rule is not None and schema == "content_view" and scoring.repeated_view(state, event, t, rules):
        run.why.append(
            f"{rule.name} not scored: page view {event['page_view_id']} scored already (event {run.trigger})"
        )
        return  # the view's first report scored it, moved its stage and made it an MQL if it does
    if rule is not None and t >= state.behaviour_since:
        scored = scoring.apply_event(state, rule, run.trigger, t)
        run.delta += scored.change_at(t, state.max_time)
        if scored.outcome == "capped":
            run.why.append(f"{rule.name} capped at {rule.daily_cap}/day (event {run.trigger})")
        else:
            scoring.record_signal(state, rules, scored, schema, event)
            run.why.append(f"{rule.name} {rule.points:+g} (event {run.trigger})")
    elif rule is not None:
        run.why.append(f"{rule.name} not scored: event before the last recycle (event {run.trigger})")
    if (
        state.stage == "lead"
        and state.disqualified_by is None
        and (rule is None or rule.points >= 0)  # an unsubscribe or a bounce "click" is no engagement
        and stages.is_engaging(schema, event, rules)
    ):
        run.move("nurturing", "engaged", t)
    if rule is not None and rule.immediate_mql and stages.can_become_mql(state):
        _enter_mql(run, "immediate_mql", f"immediate_mql:{rule.name}", immediate=True)


def _enter_mql(run: _Run, reason: str, hot_reason: str, immediate: bool) -> None:
    """Hot lead: stage mql; unless the event is late, start the follow-up SLA and notify sales.

    A follow-up at or after the MQL's time that was read before it (sales activities come on another topic)
    stops the new clock at once, at its own event time, as it would have read after: the levels that fell
    due before it fire now, with the same ids, and no clock is left running. Before, such a follow-up
    started no clock however late it came (a first_touch 28 h after a 24 h MQL: no warning, no breach)."""
    state = run.state
    tr = run.move("mql", reason, run.t)
    state.mql_at = tr.occurred_at
    if run.late:
        run.why.append(f"late event {run.trigger}: mql without notification")
        return
    timer = sla.start_follow_up(state, tr.occurred_at, immediate, run.rules)
    run.hot.append((tr, hot_reason, timer))
    answered_at = sla.first_answer(state, tr.occurred_at)
    if answered_at is not None:
        run.stop_clock(sla.FOLLOW_UP, answered_at)


# --- emit -----------------------------------------------------------------------------------------


def _emit(run: _Run, previous: float, behaviour: float, stage_before: str, now_ms: int) -> list[Output]:
    state, rules = run.state, run.rules
    lead_id = state.lead_id or state.key
    as_of = state.max_time
    score = state.fit + behaviour
    outputs: list[Output] = []
    if (
        abs(score - state.last_score) > SCORE_EPSILON
        or state.stage != stage_before
        or state.last_as_of == NEVER
    ):
        reasons = scoring.reasons(state, rules, as_of)
        outputs.append(
            Output(
                "lead_score",
                lead_id,
                {
                    "lead_id": lead_id,
                    "score": score,
                    "fit": state.fit,
                    "behaviour": behaviour,
                    "previous_score": previous,
                    "band": scoring.band(score, rules, state.stage),
                    "stage": state.stage,
                    "as_of": as_of,
                    "trigger_event_id": run.trigger,
                    "computed_at": now_ms,
                    "account_domain": state.profile.get("company_domain"),
                    "account_score": None,
                    "reasons": reasons,
                    "change_reason": "; ".join(run.why) or "decay",
                },
            )
        )
        state.last_score, state.last_as_of = score, as_of
    for tr in run.transitions:
        outputs.append(transition_output(tr, score))
    for tr, hot_reason, timer in run.hot:
        outputs.append(hot_lead_output(state, rules, tr, hot_reason, timer, score, behaviour))
    for firing in run.timeouts:
        outputs.append(timeout_output(state, lead_id, firing, now_ms))
    return outputs


# --- timers ---------------------------------------------------------------------------------------


def next_deadline(state: LeadState, rules: Rules) -> int | None:
    """Wall-clock time ``check_timers`` next has something to do for this state (None = nothing pending)."""
    return sla.next_due(state, rules) if state.lead_id is not None else None


def check_timers(state: LeadState, rules: Rules, now_ms: int) -> StepResult:
    """Periodic scan: fire due SLA levels once each, recycle MQLs nobody accepted and dormant customers."""
    if state.lead_id is None:
        return StepResult(state, changed=False)
    due = sla.next_due(state, rules)
    if due is None or due > now_ms:
        return StepResult(state, changed=False)
    lead_id = state.lead_id
    outputs = [timeout_output(state, lead_id, f, now_ms) for f in sla.due_firings(state, rules, now_ms)]
    recycle: tuple[str, int] | None = None
    if state.stage == "mql" and state.mql_at is not None:
        deadline = state.mql_at + int(rules.recycle.mql_not_accepted_days * DAY_MS)
        if deadline <= now_ms:
            recycle = ("mql_not_accepted", deadline)
    elif state.stage in ("customer", "expansion"):
        deadline = sla.dormant_since(state) + int(rules.recycle.dormant_customer_days * DAY_MS)
        if deadline <= now_ms:
            recycle = ("dormant_customer", deadline)
    if recycle is not None:
        cause, deadline = recycle
        as_of = state.max_time
        previous = state.fit + scoring.behaviour_at(state, rules, as_of)
        stage_before = state.stage
        run = _Run(state, rules, f"timer:{lead_id}:{cause}:{deadline}", deadline, late=True)
        run.move("nurturing", RECYCLED, deadline)  # the cause is in the trigger id (stages.recycle_cause)
        outputs.extend(_emit(run, previous, scoring.behaviour_at(state, rules, as_of), stage_before, now_ms))
    return StepResult(state, outputs, changed=bool(outputs))
