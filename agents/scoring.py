"""Lead scoring: fit from the profile, behaviour from events with per-rule decay and daily caps.

Pure functions over ``LeadState``; time is always a parameter (event time in ms). Why exponential decay per
rule:
a decayed sum can be carried as one (value, reference time) pair per rule and moved to any time exactly
(value(t) = value(t0)·2^(-(t-t0)/h)), so out-of-order and late events land at their own event time with no
event log kept in state.

Why caps keep "the earliest N events of the day" rather than "the first N that arrived": the kept set is then
the same whatever order events arrive in, so caps do not break out-of-order replay (see docs/scoring.md).
"""

from __future__ import annotations

import math
import re
from bisect import insort
from dataclasses import dataclass
from typing import Any, Literal

from agents.rules import DAY_MS, CompiledRule, Rules
from agents.state import LeadState, Signal, remember_view
from schemas.domain_rules import MAX_ID_CHARS

Band = Literal["cold", "warm", "hot"]
_exp = math.exp


@dataclass(slots=True, init=False)
class Scored:
    """What one behavioural event did to the score: ``outcome`` is scored, capped or replaced (it displaced a
    later event of the same capped day, whose id is ``displaced``). Not frozen: a frozen dataclass costs
    ~1 us to build, and one is built per scored event."""

    rule: CompiledRule
    outcome: Literal["scored", "capped", "replaced"]
    displaced: str | None
    displaced_at: int

    def __init__(
        self,
        rule: CompiledRule,
        outcome: Literal["scored", "capped", "replaced"],
        displaced: str | None = None,
        displaced_at: int = 0,
    ) -> None:
        self.rule, self.outcome, self.displaced, self.displaced_at = rule, outcome, displaced, displaced_at

    def change_at(self, t: int, as_of: int) -> float:
        """How much this event changed the behaviour score as of ``as_of`` (t = the event's time)."""
        if self.outcome == "capped":
            return 0.0
        rule = self.rule
        change = rule.points * _exp(-rule.k * (as_of - t))
        if self.outcome == "replaced":
            change -= rule.points * _exp(-rule.k * (as_of - self.displaced_at))
        return change


# --- fit and disqualification ---------------------------------------------------------------------


def profile_fit(profile: dict[str, Any], rules: Rules) -> float:
    """Fit points: company size band + industry + seniority (or best title keyword) + country. Never
    decays."""
    fit = rules.fit
    points = 0.0
    size = profile.get("company_size")
    if isinstance(size, int):
        for minimum, band_points in rules.compiled.sizes:
            if size >= minimum:
                points += band_points
                break
    points += fit.industry.get(profile.get("industry") or "", 0.0)
    seniority = profile.get("seniority")
    if seniority and seniority in fit.seniority:
        points += fit.seniority[seniority]
    else:
        title = (profile.get("job_title") or "").lower()
        if title:
            points += title_points(title, rules)
    points += fit.country.get((profile.get("country") or "").upper(), 0.0)
    return points


def title_points(title: str, rules: Rules) -> float:
    """Fit points of a lower-case job title (0 when nothing matches): ``fit.support_roles.points`` when
    it names a support role ("Assistant to the President" assists the president: scored as one, every
    assistant was a C-level buyer), else its highest ``title_keywords``. A keyword (or support keyword) found
    only inside a longer title keyword's match does not count: "vice president" is a VP (15), not also a
    president (20); "highest wins" made every Vice President a C-level buyer. Nor does a support keyword
    inside a ``fit.support_roles.exceptions`` phrase: "Intern Program Manager" runs the program (8), it was
    scored as an intern (2)."""
    compiled = rules.compiled
    found = [
        (m.start(), m.end(), pts) for pattern, pts in compiled.title_fit for m in pattern.finditer(title)
    ]

    def counts(start: int, end: int) -> bool:
        return not any(s <= start and end <= e and e - s > end - start for s, e, _ in found)

    exceptions = compiled.title_support_exceptions
    excepted = [(m.start(), m.end()) for m in exceptions.finditer(title)] if exceptions is not None else []

    def supports(start: int, end: int) -> bool:
        return counts(start, end) and not any(s <= start and end <= e for s, e in excepted)

    for pattern in compiled.title_support:
        if any(supports(m.start(), m.end()) for m in pattern.finditer(title)):
            return compiled.support_points
    matches = [pts for start, end, pts in found if counts(start, end)]
    return max(matches, default=0.0)


def disqualification(profile: dict[str, Any], rules: Rules) -> str | None:
    """Why the profile is not a buyer (``flag:student``, ``email_domain:u.ac.jp``, ``job_title:Student``),
    or None."""
    dq = rules.disqualify
    for flag in profile.get("flags") or ():
        if flag in dq.flags:
            return f"flag:{flag}"
    email = profile.get("email") or ""
    if "@" in email:
        domain = email.rsplit("@", 1)[1].lower()
        for listed in dq.email_domains:
            if domain == listed or domain.endswith("." + listed):
                return f"email_domain:{domain}"
        for suffix in dq.email_domain_suffixes:
            if domain.endswith(suffix):
                return f"email_domain:{domain}"
    title = profile.get("job_title") or ""
    pattern = rules.compiled.title_dq
    if title and pattern is not None and _disqualifying_title(title.lower(), pattern, rules):
        return f"job_title:{title}"
    return None


def _disqualifying_title(title: str, pattern: re.Pattern[str], rules: Rules) -> bool:
    """A title keyword that is not only part of a ``title_exceptions`` phrase ("student" in "Student
    Recruitment Manager", 学生 in 学生採用担当部長: they hire students)."""
    matches = list(pattern.finditer(title))
    exceptions = rules.compiled.title_dq_exceptions
    if not matches or exceptions is None:
        return bool(matches)
    spans = [(m.start(), m.end()) for m in exceptions.finditer(title)]
    return any(not any(s <= m.start() and m.end() <= e for s, e in spans) for m in matches)


# --- behaviour ------------------------------------------------------------------------------------


def _accumulate(acc: dict[str, list[float]], rule: CompiledRule, points: float, t: int) -> None:
    slot = acc.get(rule.name)
    if slot is None:
        acc[rule.name] = [points, float(t)]
    elif t >= slot[1]:
        slot[0] = slot[0] * _exp(-rule.k * (t - slot[1])) + points
        slot[1] = float(t)
    else:
        slot[0] += points * _exp(-rule.k * (slot[1] - t))


def apply_event(state: LeadState, rule: CompiledRule, event_id: str, t: int) -> Scored:
    """Add one event's points at its event time, honouring the rule's daily cap (earliest N of the UTC
    day)."""
    cap = rule.daily_cap
    if cap is None:
        _accumulate(state.acc, rule, rule.points, t)
        return Scored(rule, "scored")
    bucket_key = f"{rule.name}|{t // DAY_MS}"
    bucket = state.caps.get(bucket_key)
    if bucket is None:
        state.caps[bucket_key] = [[t, event_id]]
        _accumulate(state.acc, rule, rule.points, t)
        return Scored(rule, "scored")
    if len(bucket) < cap:
        insort(bucket, [t, event_id])
        _accumulate(state.acc, rule, rule.points, t)
        return Scored(rule, "scored")
    last_t, last_id = bucket[-1]
    if (t, event_id) >= (last_t, last_id):
        return Scored(rule, "capped")
    bucket.pop()
    insort(bucket, [t, event_id])
    _accumulate(state.acc, rule, -rule.points, int(last_t))
    _accumulate(state.acc, rule, rule.points, t)
    return Scored(rule, "replaced", displaced=str(last_id), displaced_at=int(last_t))


#: Between a page view's id and the item's in ``LeadState.views`` keys: a control character, which ids
#: checked by the collector or the SDK cannot hold.
VIEW_SEPARATOR = "\x1f"


def repeated_view(state: LeadState, event: dict[str, Any], t: int, rules: Rules) -> bool:
    """Whether this content_view report belongs to a page view whose report was read already (and remember
    the view when it is the first).

    Why: the browser tracker reports an element's dwell each time the page is hidden, so one reading with two
    tab switches sends three reports; each scored, so a case study read once earned three times its points
    (up to its daily cap). Reports of one view share ``page_view_id``; the first one read scores, the rest
    only go to history. A view is remembered by its newest report's time, so one still being reported stays
    remembered; one forgotten (older than the dedup window, or the least recent beyond ``max_seen_ids``)
    scores again if a report of it still comes. A report without the id (SDK, older trackers) is a view of
    its own, as before."""
    page_view = event.get("page_view_id")
    if not page_view or type(page_view) is not str or len(page_view) > MAX_ID_CHARS:
        return False
    view = f"{page_view}{VIEW_SEPARATOR}{event.get('content_id') or ''}"
    return remember_view(state, view, t, rules.state.max_seen_ids)


def behaviour_at(state: LeadState, rules: Rules, as_of: int) -> float:
    """Sum of every rule's decayed points at ``as_of`` (rules no longer in the file contribute nothing)."""
    decay_k = rules.compiled.decay_k
    total = 0.0
    for name, (value, ref) in state.acc.items():
        k = decay_k.get(name)
        if k is not None:
            total += value * _exp(k * (ref - as_of))
    return total


def reset_behaviour(state: LeadState, at: int) -> None:
    """Clean slate on recycle: behaviour, caps and signals cleared; events before ``at`` no longer score."""
    state.acc = {}
    state.caps = {}
    state.signals = []
    state.behaviour_since = max(state.behaviour_since, at)


def band(score: float, rules: Rules, stage: str | None = None) -> Band:
    """cold, warm or hot by score; a disqualified lead is cold whatever its score (DESIGN §2: disqualified
    leads are never scored hot; the score itself is still stored)."""
    if stage == "disqualified":
        return "cold"
    if score > rules.stages.mql_threshold:
        return "hot"
    return "warm" if score >= rules.stages.warm_from else "cold"


# --- signals (the "why") --------------------------------------------------------------------------


def detail_of(schema: str, event: dict[str, Any]) -> str | None:
    if schema == "web_visit":
        return event.get("url")
    if schema == "download":
        return f"{event.get('asset_type')}:{event.get('content_id')}"
    if schema == "content_view":
        return f"{event.get('content_type')}:{event.get('content_id')}"
    if schema == "email_click":
        return f"{event.get('campaign_id')}:{event.get('link_url')}"
    return None


def _currents(signals: list[Signal], rules: Rules, as_of: int) -> list[float]:
    """Each signal's points decayed to ``as_of`` (0 for a rule no longer in the file)."""
    decay_k = rules.compiled.decay_k
    out = []
    for s in signals:
        k = decay_k.get(s[0])
        out.append(0.0 if k is None else float(s[4]) * _exp(k * (int(s[3]) - as_of)))
    return out


def record_signal(state: LeadState, rules: Rules, scored: Scored, schema: str, event: dict[str, Any]) -> None:
    """Keep the ``state.top_signals`` largest contributions (by |current points| at the newest event time).

    The list may grow by half the bound (at least 5) before it is trimmed, so trimming (a sort) is amortised.
    """
    signals = state.signals
    if scored.displaced is not None:
        signals[:] = [s for s in signals if s[2] != scored.displaced]
    signals.append(
        [
            scored.rule.name,
            schema,
            event["event_id"],
            int(event["event_time"]),
            scored.rule.points,
            detail_of(schema, event),
        ]
    )
    limit = rules.state.top_signals
    if len(signals) > limit + max(5, limit // 2):
        currents = _currents(signals, rules, state.max_time)
        order = sorted(range(len(signals)), key=lambda i: -abs(currents[i]))[:limit]
        state.signals = [signals[i] for i in sorted(order)]


def reasons(state: LeadState, rules: Rules, as_of: int) -> list[dict[str, Any]]:
    """Top contributing signals for a ``lead_score``/``hot_lead`` record, largest current points first.

    Ranked by index (``currents.__getitem__``, a C call, not a Python key function per signal): one is built
    for nearly every event. ``reverse=True`` keeps a stable sort's order for ties: equal points keep their
    order of arrival."""
    signals = state.signals
    currents = _currents(signals, rules, as_of)
    order = sorted(range(len(signals)), key=currents.__getitem__, reverse=True)
    return [
        {
            "rule": (s := signals[i])[0],
            "event_type": s[1],
            "event_id": s[2],
            "event_time": int(s[3]),
            "points": float(s[4]),
            "current_points": currents[i],
            "detail": s[5],
        }
        for i in order[: rules.state.reasons]
    ]
