"""Small builders of input events for core tests: every record they return validates against its schema.

Times are epoch ms; ``T0`` is a Monday 00:00 UTC so day boundaries are easy to reason about.
"""

from __future__ import annotations

import itertools
from typing import Any

from agents.core import StepResult, check_timers, step
from agents.outputs import Output
from agents.rules import DAY_MS, HOUR_MS, Rules, load_rules
from agents.state import LeadState

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MIN = 60_000
HOUR = HOUR_MS
DAY = DAY_MS

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def _base(lead: str | None, anon: str | None, t: int, event_id: str | None, prefix: str) -> dict[str, Any]:
    return {
        "event_id": event_id or _id(prefix),
        "event_time": t,
        "anonymous_id": anon,
        "lead_id": lead,
        "source": "test",
        "received_at": None,
    }


def visit(
    lead: str | None = "L1",
    t: int = T0,
    category: str | None = "blog",
    *,
    anon: str | None = None,
    event_id: str | None = None,
    page_view: str | None = None,
) -> tuple[str, dict[str, Any]]:
    record = _base(lead, anon, t, event_id, "w")
    record.update(
        url=f"https://example.com/{category or 'page'}",
        page_category=category,
        referrer=None,
        utm_source=None,
        utm_medium=None,
        utm_campaign=None,
        utm_term=None,
        utm_content=None,
        page_view_id=page_view,
    )
    return "web_visit", record


def click(
    lead: str | None = "L1",
    t: int = T0,
    link: str = "https://example.com/product",
    *,
    anon: str | None = None,
    event_id: str | None = None,
) -> tuple[str, dict[str, Any]]:
    record = _base(lead, anon, t, event_id, "c")
    record.update(campaign_id="spring", email_id="m1", link_url=link)
    return "email_click", record


def download(
    lead: str | None = "L1",
    t: int = T0,
    asset: str = "whitepaper",
    *,
    anon: str | None = None,
    event_id: str | None = None,
) -> tuple[str, dict[str, Any]]:
    record = _base(lead, anon, t, event_id, "d")
    record.update(content_id=f"{asset}-1", asset_type=asset)
    return "download", record


def view(
    lead: str | None = "L1",
    t: int = T0,
    content_type: str = "webinar",
    *,
    anon: str | None = None,
    event_id: str | None = None,
    page_view: str | None = None,
    content_id: str | None = None,
) -> tuple[str, dict[str, Any]]:
    record = _base(lead, anon, t, event_id, "v")
    record.update(
        content_id=content_id or f"{content_type}-1",
        content_type=content_type,
        dwell_ms=60_000,
        percent_viewed=80.0,
        channel=None,
        page_view_id=page_view,
    )
    return "content_view", record


def identified(
    lead: str = "L1", t: int = T0, *, anon: str | None = None, event_id: str | None = None, **profile: Any
) -> tuple[str, dict[str, Any]]:
    record: dict[str, Any] = {
        "event_id": event_id or _id("p"),
        "event_time": t,
        "anonymous_id": anon,
        "lead_id": lead,
        "source": "form",
        "received_at": None,
        "email": None,
        "company_domain": None,
        "company_name": None,
        "company_size": None,
        "industry": None,
        "job_title": None,
        "seniority": None,
        "country": None,
        "flags": [],
        "owner": None,
        "segment": None,
    }
    record.update(profile)
    return "lead_identified", record


def activity(
    kind: str,
    lead: str = "L1",
    t: int = T0,
    *,
    reason: str | None = None,
    owner: str | None = "rep1",
    event_id: str | None = None,
) -> tuple[str, dict[str, Any]]:
    return "sales_activity", {
        "event_id": event_id or _id("s"),
        "event_time": t,
        "lead_id": lead,
        "source": "crm",
        "received_at": None,
        "activity": kind,
        "owner": owner,
        "reason": reason,
        "amount": None,
    }


def rules(**overrides: Any) -> Rules:
    """The shipped default rules, optionally with top-level sections replaced (deep-merged one level)."""
    base = load_rules()
    if not overrides:
        return base
    data = base.model_dump()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Rules.model_validate(data)


class Lead:
    """Drives keys through the core like the shell would, following forwards; keeps all outputs."""

    def __init__(self, rules_: Rules | None = None, now: int = T0) -> None:
        self.rules = rules_ or rules()
        self.now = now
        self.states: dict[str, LeadState] = {}
        self.outputs: list[Output] = []
        self.results: list[StepResult] = []

    def send(
        self, *events: tuple[str, dict[str, Any]], key: str | None = None, received: int | None = None
    ) -> list[Output]:
        produced: list[Output] = []
        for schema, event in events:
            queue = [(key or event.get("lead_id") or event.get("anonymous_id"), schema, event)]
            while queue:
                k, s, e = queue.pop(0)
                result = step(self.states.get(k), k, s, e, self.rules, self.now, received)
                self.results.append(result)
                self.states[k] = result.state
                produced.extend(result.outputs)
                queue.extend((f.key, f.schema, f.event) for f in result.forwards)
        self.outputs.extend(produced)
        return produced

    def tick(self, now: int, key: str = "L1") -> list[Output]:
        result = check_timers(self.states[key], self.rules, now)
        self.states[key] = result.state
        self.outputs.extend(result.outputs)
        return result.outputs

    def state(self, key: str = "L1") -> LeadState:
        return self.states[key]

    def of(self, schema: str) -> list[dict[str, Any]]:
        return [o.record for o in self.outputs if o.schema == schema]

    def stages(self) -> list[tuple[str, str, str]]:
        return [(r["from_stage"], r["to_stage"], r["reason"]) for r in self.of("stage_transition")]

    def score(self, key: str = "L1") -> float:
        from agents.scoring import behaviour_at

        state = self.states[key]
        return state.fit + behaviour_at(state, self.rules, state.max_time)
