"""The bodies of a hot-lead notification: generic JSON (every field) or a Slack incoming-webhook message.

Pure (a hot_lead record in, bytes out; no clock, no I/O), so the escaping and Slack's size limits are
tested without a receiver. The sender (``sinks.webhook``) calls ``render`` once per target.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from sinks.webhook_targets import WebhookTarget

#: Slack refuses a message whose section text exceeds 3,000 characters (``invalid_blocks``, HTTP 400:
#: a permanent failure, so the rep never saw the lead); the fallback ``text`` is kept as short.
SLACK_SECTION_MAX = 3000
SLACK_FIELD_MAX = 300  # one profile value or signal detail in a Slack message


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def json_body(hot: dict[str, Any]) -> bytes:
    """The hot_lead record as JSON with ``type`` and ISO copies of its timestamps (epoch ms kept too)."""
    payload = {
        "type": "lead.hot",
        **hot,
        "became_hot_at_iso": _iso(hot.get("became_hot_at")),
        "sla_due_at_iso": _iso(hot.get("sla_due_at")),
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def _clip(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters; never ends inside an ``&amp;``-style entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    entity = cut.rfind("&")
    return (cut[:entity] if entity >= 0 and ";" not in cut[entity:] else cut) + "…"


#: Line breaks, other control characters and bidirectional overrides: shown as one space in Slack.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")


def slack_text(value: Any, limit: int = SLACK_FIELD_MAX) -> str:
    """A lead's value as literal Slack mrkdwn text on one line: ``&``, ``<``, ``>`` escaped (Slack's rule),
    control characters as a space, at most ``limit`` characters once escaped.

    Why: the profile comes from forms and the public tracker. Unescaped, a company name such as
    ``<!channel>`` notified the whole channel and ``<https://evil.example|Open in CRM>`` showed a link to
    anywhere in a message the reps trust. A line break in a company name started a line of its own in the
    message (a fake ``*Follow up before:*``), and the limit counted characters before escaping: four
    profile values of ``&`` or ``<`` filled the section, and the clipping cut off the follow-up time."""
    text = _UNPRINTABLE.sub(" ", str(value))
    return _clip(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"), limit)


def _why_hot(reason: str) -> str:
    """The record's reason in the words of the revenue model: a direct inquiry (catalog, inquiry, demo
    request: the short SLA) or a score over the MQL threshold; the rule id stays for the rules file."""
    if reason.startswith("immediate_mql:"):
        return f"direct inquiry ({reason.removeprefix('immediate_mql:')})"
    return "score over the MQL threshold" if reason == "score_threshold" else reason


def _slack_date(ms: int, iso: str) -> str:
    """A time Slack shows in each reader's own time zone (``<!date^…>``), with the UTC ISO time as the
    fallback text for clients that cannot: a rep in Tokyo read a UTC deadline nine hours off."""
    return f"<!date^{ms // 1000}^{{date_short_pretty}} {{time}}|{iso}>"


def _clock(hot: dict[str, Any]) -> str:
    """``"1 h clock, "``: how long the rep has from the moment the lead became hot (1 h for a direct
    inquiry, 24 h by default, a segment's own), so the deadline's urgency is read at a glance."""
    due, start = hot.get("sla_due_at"), hot.get("became_hot_at")
    if not isinstance(due, int) or not isinstance(start, int) or due <= start:
        return ""
    minutes = (due - start) / 60_000
    return f"{minutes / 60:g} h clock, " if minutes >= 60 else f"{minutes:.0f} min clock, "


def slack_body(hot: dict[str, Any], top: int = 5) -> bytes:
    """Incoming-webhook message: who, why (top signals), profile and the SLA due time. Every value from
    the lead is escaped and clipped (``slack_text``) and each section kept within Slack's 3,000 characters;
    the JSON body carries the full values.

    The score shows its fit and behaviour parts: the signals listed are behaviour only, so a score of 105
    next to signals worth 45 left a rep guessing where 60 came from (the profile). A lead with no owner says
    so: nobody's clock is running for it, and in the demo unassigned hot leads breached most."""
    who = slack_text(hot.get("email") or hot["lead_id"])
    company = slack_text(hot.get("company_name") or hot.get("company_domain") or "unknown company")
    parts = ""
    if isinstance(hot.get("fit"), int | float) and isinstance(hot.get("behaviour"), int | float):
        parts = f" (fit {hot['fit']:.0f} + behaviour {hot['behaviour']:.0f})"
    headline = (
        f":fire: Hot lead {who} ({company}), score {hot['score']:.0f}{parts}: "
        f"{slack_text(_why_hot(str(hot['reason'])))}"
    )
    signals = sorted(hot.get("signals") or [], key=lambda s: -abs(s.get("current_points", 0.0)))[:top]
    why = (
        "\n".join(
            f"• {slack_text(s['rule'])} ({slack_text(s['event_type'])}): {s['current_points']:+.0f}"
            + (f" — {slack_text(s['detail'])}" if s.get("detail") else "")
            for s in signals
        )
        or "• (no signals)"
    )
    profile = ", ".join(
        slack_text(v)
        for v in (
            hot.get("job_title"),
            hot.get("industry"),
            hot.get("country"),
            hot.get("company_size") and f"{hot['company_size']} employees",
        )
        if v
    )
    due = _iso(hot.get("sla_due_at"))
    lines = [f"*Why:*\n{why}"]
    if profile:
        lines.append(f"*Profile:* {profile}")
    owner = f"owner {slack_text(hot['owner'])}" if hot.get("owner") else "no owner assigned"
    if due:
        lines.append(f"*Follow up before:* {_slack_date(hot['sla_due_at'], due)} ({_clock(hot)}{owner})")
    elif not hot.get("owner"):
        lines.append("*Owner:* none assigned")
    # clipped on whole lines where possible: the SLA line matters more than the fifth signal's detail
    rest = "".join("\n" + line for line in lines[1:])
    details = _clip(_clip(lines[0], max(SLACK_SECTION_MAX - len(rest), 200)) + rest, SLACK_SECTION_MAX)
    headline = _clip(headline, SLACK_SECTION_MAX)
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        {"type": "section", "text": {"type": "mrkdwn", "text": details}},
    ]
    return json.dumps({"text": headline, "blocks": blocks}, separators=(",", ":")).encode()


def render(target: WebhookTarget, hot: dict[str, Any]) -> bytes:
    return slack_body(hot) if target.kind == "slack" else json_body(hot)
