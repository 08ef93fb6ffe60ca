"""The records the core emits for the output topics (DESIGN §2-§4): one builder per record type.

Why apart from ``agents/core.py``: the core decides *when* a lead changes stage, turns hot or misses an SLA;
these say *what* the rep, the CRM and the analysts receive, field by field as ``schemas/*.avsc`` define it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents import scoring, sla
from agents.rules import Rules
from agents.stages import Transition
from agents.state import LeadState, SlaTimer


@dataclass(frozen=True, slots=True)
class Output:
    """A record for an output topic; ``record`` validates against ``schemas/<schema>.avsc``."""

    schema: str
    key: str
    record: dict[str, Any]


def transition_output(tr: Transition, score: float) -> Output:
    return Output(
        "stage_transition",
        tr.lead_id,
        {
            "lead_id": tr.lead_id,
            "from_stage": tr.from_stage,
            "to_stage": tr.to_stage,
            "reason": tr.reason,
            "trigger_event_id": tr.trigger_event_id,
            "score": score,
            "occurred_at": tr.occurred_at,
            "transition_id": tr.transition_id,
        },
    )


def hot_lead_output(
    state: LeadState,
    rules: Rules,
    tr: Transition,
    reason: str,
    timer: SlaTimer | None,
    score: float,
    behaviour: float,
) -> Output:
    p = state.profile
    size = p.get("company_size")
    return Output(
        "hot_lead",
        tr.lead_id,
        {
            "lead_id": tr.lead_id,
            "notification_id": f"{tr.lead_id}:hot:{tr.seq}",
            "score": score,
            "fit": state.fit,
            "behaviour": behaviour,
            "reason": reason,
            "became_hot_at": tr.occurred_at,
            "sla_due_at": timer.due_at if timer else None,
            "owner": state.owner,
            "signals": scoring.reasons(state, rules, state.max_time),
            "email": p.get("email"),
            "company_name": p.get("company_name"),
            "company_domain": p.get("company_domain"),
            "company_size": size if isinstance(size, int) else None,
            "industry": p.get("industry"),
            "job_title": p.get("job_title"),
            "country": p.get("country"),
            "account_score": None,
        },
    )


def timeout_output(state: LeadState, lead_id: str, firing: sla.Firing, now_ms: int) -> Output:
    timer = firing.timer
    return Output(
        "sla_timeout",
        lead_id,
        {
            "lead_id": lead_id,
            "sla": firing.sla,
            "level": firing.level,
            "started_at": timer.started_at,
            "due_at": timer.due_at,
            "owner": timer.owner or state.owner,
            "fired_at": now_ms,
            "notify": list(firing.notify),
            "timeout_id": f"{lead_id}:{firing.timeout_id}",
        },
    )
