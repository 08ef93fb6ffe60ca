"""The funnel ("The Model", DESIGN §2): stage ids, the edges a lead may move along, and what moves it.

Why an explicit edge table: every ``stage_transition`` a consumer sees must be one of these edges, and the
property tests check exactly that. Why forward moves are clamped and backward moves guarded: events arrive
out of
order, so a move toward the customer end applies whenever its trigger arrives (``occurred_at`` is clamped to
the
previous move so a lead's history stays ordered in time), while a move back (recycle, lost upsell) only
applies if
its event is not older than the lead's current stage — a late ``rejected`` must not undo a newer ``accepted``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.rules import Rules
from agents.state import LeadState

STAGES = (
    "awareness",
    "lead",
    "nurturing",
    "mql",
    "sal",
    "opportunity",
    "customer",
    "expansion",
    "disqualified",
)
#: The funnel path in order (every stage but ``disqualified``), as reports and the content catalogue use it.
FUNNEL_PATH = STAGES[:-1]
RANK = {stage: i for i, stage in enumerate(FUNNEL_PATH)}
PRE_CUSTOMER = frozenset({"lead", "nurturing", "mql", "sal", "opportunity"})
RECYCLED = "recycled"

ALLOWED_EDGES: dict[str, frozenset[str]] = {
    "awareness": frozenset({"lead"}),
    "lead": frozenset({"nurturing", "mql", "sal", "opportunity", "customer", "disqualified"}),
    "nurturing": frozenset({"mql", "sal", "opportunity", "customer", "disqualified"}),
    "mql": frozenset({"nurturing", "sal", "opportunity", "customer", "disqualified"}),
    "sal": frozenset({"nurturing", "opportunity", "customer", "disqualified"}),
    "opportunity": frozenset({"nurturing", "customer", "disqualified"}),
    "customer": frozenset({"expansion", "nurturing"}),
    "expansion": frozenset({"customer", "nurturing"}),
    "disqualified": frozenset({"lead"}),
}

# sales activity -> (stages it applies in, target stage, reason)
_ACTIVITY_MOVES: dict[str, tuple[tuple[frozenset[str], str, str], ...]] = {
    "accepted": ((frozenset({"lead", "nurturing", "mql"}), "sal", "accepted"),),
    "meeting_booked": ((frozenset({"lead", "nurturing", "mql"}), "sal", "meeting_booked"),),
    "opportunity_created": (
        (frozenset({"lead", "nurturing", "mql", "sal"}), "opportunity", "opportunity_created"),
    ),
    "closed_won": ((PRE_CUSTOMER | {"expansion"}, "customer", "closed_won"),),
    "onboarded": ((PRE_CUSTOMER, "customer", "onboarded"),),
    "upsell_opened": ((frozenset({"customer"}), "expansion", "upsell_opened"),),
    # DESIGN §2: a recycle's reason is ``recycled``; its cause is the trigger (this activity, or the timer
    # named in the synthetic trigger id of a timed recycle: ``recycle_cause``)
    "rejected": ((frozenset({"mql", "sal"}), "nurturing", RECYCLED),),
    "closed_lost": (
        (frozenset({"opportunity"}), "nurturing", RECYCLED),
        (frozenset({"expansion"}), "customer", "closed_lost"),
    ),
}


class IllegalTransition(Exception):
    """A move not in ALLOWED_EDGES was attempted: a bug in the core, never a data problem."""


@dataclass(frozen=True, slots=True)
class Transition:
    lead_id: str
    from_stage: str
    to_stage: str
    reason: str
    trigger_event_id: str
    occurred_at: int
    seq: int

    @property
    def transition_id(self) -> str:
        return f"{self.lead_id}:{self.seq}"


def is_forward(from_stage: str, to_stage: str) -> bool:
    """Toward the customer end of the funnel (disqualify/requalify count as forward: profile-driven)."""
    if from_stage == "disqualified" or to_stage == "disqualified":
        return True
    return RANK[to_stage] > RANK[from_stage]


def move(state: LeadState, to_stage: str, reason: str, trigger_event_id: str, at: int) -> Transition:
    """Apply one edge to ``state`` and return it; ``occurred_at`` never goes before the previous move."""
    from_stage = state.stage
    if to_stage not in ALLOWED_EDGES[from_stage]:
        raise IllegalTransition(
            f"{state.lead_id}: {from_stage} -> {to_stage} ({reason}) is not an allowed edge"
        )
    occurred_at = max(at, state.stage_at)
    state.seq += 1
    state.stage = to_stage
    state.stage_at = occurred_at
    return Transition(
        state.lead_id or state.key, from_stage, to_stage, reason, trigger_event_id, occurred_at, state.seq
    )


def activity_move(stage: str, activity: str, event_time: int, stage_at: int) -> tuple[str, str] | None:
    """(target stage, reason) a sales activity moves a lead in ``stage`` to, or None.

    Backward moves (recycle, lost upsell) need the activity to be at least as new as the current stage.
    Disqualified leads are not moved by sales activities; only a new profile requalifies them.
    """
    for applies_in, target, reason in _ACTIVITY_MOVES.get(activity, ()):
        if stage in applies_in:
            if not is_forward(stage, target) and event_time < stage_at:
                return None
            return target, reason
    return None


def recycle_cause(from_stage: str, trigger_event_id: str) -> str:
    """Why a ``recycled`` transition happened: ``mql_not_accepted`` or ``dormant_customer`` for a timed
    recycle (its trigger id is ``timer:<lead>:<cause>:<deadline>``, core.check_timers), ``closed_lost`` out
    of an opportunity, else ``rejected``. The same rule in SQL is ``sinks.reports.funnel.RECYCLE_CAUSE``."""
    if trigger_event_id.startswith("timer:"):
        return trigger_event_id.rsplit(":", 2)[-2]
    return "closed_lost" if from_stage == "opportunity" else "rejected"


def is_engaging(schema: str, event: dict[str, Any], rules: Rules) -> bool:
    """Engagement that makes a lead ``nurturing``: an email click or a visit to a product page (by
    default)."""
    stage_rules = rules.stages
    if schema in stage_rules.engaged_event_types:
        return True
    return schema == "web_visit" and event.get("page_category") in stage_rules.engaged_page_categories


def can_become_mql(state: LeadState) -> bool:
    return state.stage in ("lead", "nurturing") and state.disqualified_by is None
