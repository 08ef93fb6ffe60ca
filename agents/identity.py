"""Identity stitching across partitions: an anonymous visitor's history joins its lead in two hops.

Why two hops: state is partitioned by identity key (lead_id else anonymous_id), so the anonymous visitor A
and the
lead L usually live on different workers. Neither can read the other's state; they talk through an internal
topic:

1. ``lead_identified(L, A)`` on L's state records the alias and yields an ``alias`` instruction keyed by A.
2. The instruction on A's state sets ``merged_into = L`` and yields A's buffered raw events, re-keyed to L.
3. Any later event on A (a late anonymous event, a tab still open) is forwarded to L instead of being kept.

L scores forwarded events like any other, with event-id dedup, so replaying any hop is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.state import MAX_ALIASES, LeadState, has_non_finite

# The alias instruction travels as a ``lead_identified`` record keyed by the anonymous id: real ones are
# keyed by
# their (required) lead_id, so a lead_identified arriving on an anonymous key can only be an instruction. This
# needs no extra Avro schema for the internal topic.
ALIAS_SCHEMA = "lead_identified"


_NULLABLE = (
    "received_at",
    "email",
    "company_domain",
    "company_name",
    "company_size",
    "industry",
    "job_title",
    "seniority",
    "country",
    "owner",
    "segment",
)


@dataclass(frozen=True, slots=True)
class Forward:
    """An event to deliver to another identity key (via the shell's internal topic)."""

    key: str
    schema: str
    event: dict[str, Any]


def alias_instruction(lead_id: str, anonymous_id: str, event_id: str, event_time: int) -> Forward:
    """The instruction of step (a): a complete, schema-valid ``lead_identified`` record keyed by A."""
    record: dict[str, Any] = dict.fromkeys(_NULLABLE)
    record.update(
        event_id=f"alias:{event_id}",
        event_time=event_time,
        anonymous_id=anonymous_id,
        lead_id=lead_id,
        source="leadpulse.identity",
        flags=[],
    )
    return Forward(anonymous_id, ALIAS_SCHEMA, record)


def link(state: LeadState, event: dict[str, Any]) -> list[Forward]:
    """Step (a): on the lead's state, remember the alias and ask the anonymous key to hand over its history.

    Also called for a *duplicate* ``lead_identified``: re-sending the instruction is harmless, and it
    repairs a
    crash between storing the state and sending the instruction.
    """
    anonymous_id = event.get("anonymous_id")
    lead_id = state.lead_id
    if not anonymous_id or lead_id is None or anonymous_id == state.key:
        return []
    if anonymous_id not in state.aliases:
        state.aliases.append(anonymous_id)
        del state.aliases[:-MAX_ALIASES]
    return [alias_instruction(lead_id, anonymous_id, str(event["event_id"]), int(event["event_time"]))]


def retarget(event: dict[str, Any], lead_id: str) -> dict[str, Any]:
    return {**event, "lead_id": lead_id}


def apply_alias(state: LeadState, instruction: dict[str, Any]) -> list[Forward]:
    """Step (b): on the anonymous state, point it at the lead and forward the buffered history.

    The newest instruction applied wins for later events (a shared device identified as a second lead);
    history
    already forwarded stays with the lead it went to.
    """
    lead_id = str(instruction["lead_id"])
    state.merged_into = lead_id
    forwards = [Forward(lead_id, schema, retarget(event, lead_id)) for schema, event in state.buffer]
    state.buffer = []
    state.non_finite = False
    return forwards


def forward_merged(state: LeadState, schema: str, event: dict[str, Any]) -> Forward | None:
    """Step (c): an event on an already merged anonymous state goes to its lead instead of being kept."""
    if state.merged_into is None:
        return None
    return Forward(state.merged_into, schema, retarget(event, state.merged_into))


def buffer_event(state: LeadState, schema: str, event: dict[str, Any], limit: int) -> None:
    """Keep an anonymous event for a later stitch; over the limit the oldest (by event time) is dropped."""
    if limit <= 0:
        return
    state.buffer.append([schema, event])
    if state.non_finite is False and has_non_finite(event):
        state.non_finite = True
    if len(state.buffer) > limit:
        oldest = min(range(len(state.buffer)), key=lambda i: int(state.buffer[i][1]["event_time"]))
        del state.buffer[oldest]
