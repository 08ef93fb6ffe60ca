"""The reports as one self-contained HTML page: inline CSS and inline SVG charts above each report's tables.

Why one file with nothing to fetch: the demo ends by writing it and a reader opens it from disk, often on
a machine with no network. So no script, font, stylesheet or image is referenced, and a Content Security
Policy (``default-src 'none'``) makes the browser refuse any that slipped in, escaping mistakes included.
Everything that comes from data (content titles, owners, reasons) passes through ``html.escape``.

Charts are chosen by report name (the keys ``leadpulse demo`` and the CLI use: content, health, funnel,
sla, plan) and read the columns those report functions return; a report with another name gets tables only.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from sinks.reports.charts import (
    AMBER,
    BLUE,
    DASH,
    RED,
    TEAL,
    Meter,
    Series,
    Step,
    bar_chart,
    compliance_chart,
    format_days,
    format_number,
    format_percent,
    funnel_chart,
    is_number,
)
from sinks.reports.funnel import PATH

Rows = Sequence[Mapping[str, Any]]
Sections = Mapping[str, Rows]

TOP_CONTENT = 10
REPORT_TITLES = {
    "content": "Content performance",
    "health": "Content health",
    "funnel": "Funnel",
    "sla": "SLA compliance",
    "plan": "Plan (The Model, reverse)",
}
# Columns holding a share 0..1, shown as percentages.
RATIO_COLUMNS = frozenset(
    {
        "conversion_to_next",
        "compliance",
        "own_sla_compliance",
        "touched_conversion",
        "all_leads_conversion",
        "rate_from_previous",
        "share",
    }
)

CSS = """
:root { --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f5f7fa; --card: #fff; --accent: #2563eb; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: var(--bg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", "DejaVu Sans",
  sans-serif; }
header { background: #0f172a; color: #fff; padding: 22px max(32px, calc((100% - 1180px) / 2 + 32px)); }
header h1 { margin: 0; font-size: 22px; font-weight: 650; }
header p { margin: 4px 0 0; color: #cbd5e1; font-size: 13px; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 32px 40px; }
nav { margin: 0 0 18px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.summary { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px;
  margin-bottom: 20px; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.stat .value { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; }
.stat .label { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .05em; }
section.report { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 18px 22px; margin-bottom: 22px; }
section.report h2 { margin: 0 0 12px; font-size: 18px; }
h3 { margin: 18px 0 6px; font-size: 14px; }
h3 .count { color: var(--muted); font-weight: 400; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 14px 22px; }
figure { margin: 0; padding: 10px 12px; border: 1px solid var(--line); border-radius: 8px; }
figcaption { font-weight: 600; font-size: 13px; margin-bottom: 6px; }
figcaption small { color: var(--muted); font-weight: 400; }
svg.chart { display: block; width: 100%; height: auto; font-family: inherit; }
svg.chart .rate { fill: #1d4ed8; font-weight: 600; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
thead th { background: #f1f5f9; font-weight: 600; color: #334155; white-space: normal;
  vertical-align: bottom; }
td.num, th.num { text-align: right; }
td.text { white-space: normal; min-width: 14ch; max-width: 40ch; overflow-wrap: anywhere; }
td.none { color: var(--muted); }
tbody tr:nth-child(even) { background: #fafbfc; }
.empty { color: var(--muted); font-style: italic; margin: 6px 0; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 0 0 28px; }
@media print { body { background: #fff; } section.report { break-inside: avoid; border: none; } }
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'"


# --- cells ----------------------------------------------------------------------------------------------
def format_cell(value: Any, column: str = "") -> str:
    """Plain text for one table cell (escaped by the caller): ratios as percentages, counts with
    thousands separators, None and NaN as a dash."""
    if value is None or (isinstance(value, float) and value != value):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if is_number(value):
        return format_percent(value) if column in RATIO_COLUMNS else format_number(value)
    if isinstance(value, list | tuple):
        return ", ".join(format_cell(v) for v in value)
    return str(value)


def _columns(rows: Rows) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    return columns


def _heading(name: str) -> str:
    return name.replace("_", " ")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "report"


def render_table(rows: Rows) -> str:
    if not rows:
        return '<p class="empty">No rows in this period.</p>'
    columns = _columns(rows)
    numeric = {c for c in columns if any(is_number(r.get(c)) for r in rows)}
    head = "".join(
        f'<th{" class=num" if c in numeric else ""} title="{escape(c)}">{escape(_heading(c))}</th>'
        for c in columns
    )
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            cls = "num" if c in numeric else "text"
            if value is None:
                cls += " none"
            cells.append(f'<td class="{cls}">{escape(format_cell(value, c))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# --- charts per report ----------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    return float(value) if is_number(value) else None


def _figure(caption: str, note: str, svg: str | None, empty: str) -> str:
    small = f" <small>{escape(note)}</small>" if note else ""
    inner = svg if svg is not None else f'<p class="empty">{escape(empty)}</p>'
    return f"<figure><figcaption>{escape(caption)}{small}</figcaption>{inner}</figure>"


def content_charts(sections: Sections) -> list[str]:
    rows = list(sections.get("content", []))[:TOP_CONTENT]
    labels = [str(r.get("title") or r.get("content_id") or "?") for r in rows]
    series = [
        Series("views", [_num(r.get("views")) for r in rows], BLUE),
        Series("unique leads", [_num(r.get("unique_leads")) for r in rows], TEAL),
        Series("leads influenced", [_num(r.get("influenced_leads")) for r in rows], AMBER),
    ]
    title = "Content performance"
    svg = bar_chart("content-performance", title, labels, series) if rows else None
    note = f"top {len(rows)} by leads influenced, then views" if rows else ""
    return [_figure(title, note, svg, "No content was touched in this period.")]


def _path_rows(sections: Sections) -> list[Mapping[str, Any]]:
    by_stage = {r.get("stage"): r for r in sections.get("stages", [])}
    return [by_stage[s] for s in PATH if s in by_stage]


def funnel_charts(sections: Sections) -> list[str]:
    rows = _path_rows(sections)
    steps = [Step(str(r["stage"]), _num(r.get("entered")), _num(r.get("conversion_to_next"))) for r in rows]
    has_leads = any(s.value for s in steps)
    funnel = funnel_chart("funnel", "Funnel", steps) if has_leads else None
    moves = [r for r in rows if r.get("next_stage")]
    days = [_num(r.get("median_days_to_next")) for r in moves]
    labels = [f"{r['stage']} → {r['next_stage']}" for r in moves]
    velocity = (
        bar_chart("velocity", "Stage velocity", labels, [Series("median days", days, TEAL)], fmt=format_days)
        if any(d is not None for d in days)
        else None
    )
    return [
        _figure(
            "Funnel",
            "leads entering each stage; ↓ share of them that went further",
            funnel,
            "No stage changes.",
        ),
        _figure("Stage velocity", "median days to the next stage", velocity, "No stage pairs to time."),
        *([feedback_chart(sections["feedback"])] if "feedback" in sections else []),
    ]


FEEDBACK_LABELS = {"rejected": "rejected", "closed_lost": "lost"}


def feedback_chart(rows: Rows) -> str:
    """Why sales rejected leads and lost deals: one bar per activity and reason (the stages summed; the
    table under the charts splits them)."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (str(row.get("activity")), str(row.get("reason")))
        counts[key] = counts.get(key, 0) + int(_num(row.get("count")) or 0)
    order = list(dict.fromkeys(activity for activity, _ in counts))  # the report's order: rejections first
    bars = sorted(counts.items(), key=lambda kv: (order.index(kv[0][0]), -kv[1], kv[0][1]))
    labels = [f"{FEEDBACK_LABELS.get(activity, activity)}: {reason}" for (activity, reason), _ in bars]
    values: list[float | None] = [n for _, n in bars]
    svg = bar_chart("feedback", "Feedback", labels, [Series("count", values, RED)]) if bars else None
    return _figure(
        "Feedback from sales",
        "rejected leads and lost deals by reason",
        svg,
        "No rejections or lost deals in this period.",
    )


def _owner_label(row: Mapping[str, Any]) -> str:
    """The owner, and the SLA when it is not the follow-up (rejection feedback has its own bars)."""
    owner = str(row.get("owner") or "(unassigned)")
    sla = row.get("sla")
    return owner if sla in (None, "hot_lead_follow_up") else f"{owner} ({sla})"


def sla_meters(follow: Mapping[str, Any]) -> list[Meter]:
    """The headline is the own-clock compliance: each MQL against its own deadline (1 h for a direct
    inquiry, per-segment hours), what the worker's breaches judge. The flat ``--sla-hours`` share stays
    beside it, labelled: it forgives a 1 h inquiry answered after 23 h."""
    sla_hours = _num(follow.get("sla_hours")) or 24.0
    own, flat = _num(follow.get("own_sla_compliance")), _num(follow.get("compliance"))
    own_tip = DASH if own is None else format_percent(own)
    flat_tip = DASH if flat is None else format_percent(flat)
    return [
        Meter(
            "within own SLA",
            own,
            f"own-clock compliance: {own_tip} of the judged MQLs answered by their own deadline",
            headline=True,
        ),
        Meter(
            f"within {sla_hours:g} h (flat)",
            flat,
            f"flat compliance: {flat_tip} answered within {sla_hours:g} h, whatever their own deadline",
        ),
    ]


def sla_charts(sections: Sections) -> list[str]:
    follow = next(iter(sections.get("follow_up", [])), {})
    sla_hours = _num(follow.get("sla_hours")) or 24.0
    compliance = None
    if follow.get("mqls"):
        percentiles = [(f"p{q}", _num(follow.get(f"p{q}_hours"))) for q in (50, 90, 95)]
        compliance = compliance_chart(
            "sla-compliance", "SLA compliance", sla_meters(follow), percentiles, sla_hours
        )
    owners = list(sections.get("by_owner", []))
    breaches = (
        bar_chart(
            "sla-owners",
            "Breaches per owner",
            [_owner_label(r) for r in owners],
            [
                Series("breaches", [_num(r.get("breaches")) for r in owners], RED),
                Series("warnings", [_num(r.get("warnings")) for r in owners], AMBER),
            ],
        )
        if owners
        else None
    )
    per_owner = [
        r for r in sections.get("owner_compliance", []) if _num(r.get("own_sla_compliance")) is not None
    ]
    owner_compliance = (
        bar_chart(
            "sla-owner-compliance",
            "Own-clock compliance per owner",
            [f"{r.get('owner') or '(unassigned)'} ({r.get('hot_leads')} hot)" for r in per_owner],
            [Series("within own SLA", [_num(r.get("own_sla_compliance")) for r in per_owner], TEAL)],
            fmt=format_percent,
        )
        if per_owner
        else None
    )
    figures = [
        _figure(
            "SLA compliance",
            f"answered by each MQL's own deadline (the SLA the worker enforces), and within a flat "
            f"{sla_hours:g} h; follow-up time percentiles",
            compliance,
            "No lead became MQL in this period.",
        ),
        _figure("Breaches per owner", "SLA events fired", breaches, "No SLA warnings or breaches."),
    ]
    if "owner_compliance" in sections:
        figures.append(
            _figure(
                "Compliance per owner",
                "hot leads answered within their own clock, of those judged",
                owner_compliance,
                "No owner had a clock to judge in this period.",
            )
        )
    return figures


def health_charts(sections: Sections) -> list[str]:
    rows = list(sections.get("coverage", []))
    series = [
        Series(name, [_num(r.get(key)) for r in rows], color)
        for name, key, color in (("items", "items", BLUE), ("used", "used", TEAL), ("fresh", "fresh", AMBER))
    ]
    labels = [str(r.get("funnel_stage")) for r in rows]
    svg = bar_chart("content-coverage", "Content coverage", labels, series) if rows else None
    return [_figure("Content coverage", "items per funnel stage", svg, "No content catalogue.")]


def plan_charts(sections: Sections) -> list[str]:
    rows = list(reversed(list(sections.get("plan", []))))  # the report lists wins first
    steps = [
        Step(
            str(r.get("label") or r.get("stage")),
            _num(r.get("needed")),
            _num(rows[i + 1].get("rate_from_previous")) if i + 1 < len(rows) else None,
        )
        for i, r in enumerate(rows)
    ]
    svg = funnel_chart("plan", "Plan", steps) if any(s.value for s in steps) else None
    return [_figure("What the target needs", "per stage, top down", svg, "No plan rows.")]


CHARTS: dict[str, Callable[[Sections], list[str]]] = {
    "content": content_charts,
    "funnel": funnel_charts,
    "sla": sla_charts,
    "health": health_charts,
    "plan": plan_charts,
}


# --- the page -------------------------------------------------------------------------------------------
def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _summary(summary: Mapping[str, Any]) -> str:
    stats = "".join(
        f'<div class="stat"><div class="value">{escape(format_cell(value))}</div>'
        f'<div class="label">{escape(str(label))}</div></div>'
        for label, value in summary.items()
    )
    return f'<div class="summary">{stats}</div>'


def _report(name: str, sections: Sections) -> str:
    title = REPORT_TITLES.get(name, _heading(name).capitalize())
    charts = CHARTS[name](sections) if name in CHARTS else []
    parts = [f'<section class="report" id="report-{_slug(name)}"><h2>{escape(title)}</h2>']
    if charts:
        parts.append(f'<div class="charts">{"".join(charts)}</div>')
    for section, rows in sections.items():
        count = f"{len(rows):,} row{'s' if len(rows) != 1 else ''}"
        parts.append(f'<h3>{escape(_heading(section))} <span class="count">({count})</span></h3>')
        parts.append(render_table(rows))
    parts.append("</section>")
    return "".join(parts)


def render_html(
    reports: Mapping[str, Sections],
    *,
    title: str,
    generated_at_ms: int,
    summary: Mapping[str, Any] | None = None,
    subtitle: str | None = None,
) -> str:
    """The whole page. ``reports`` maps a report name to its sections; ``summary`` maps a label to a value
    shown in the strip under the header (numbers get thousands separators; pass a string such as
    ``format_percent(0.81)`` for anything else); ``subtitle`` is a line under the title, e.g. the period."""
    sub = f"<p>{escape(subtitle)}</p>" if subtitle else ""
    nav = "".join(
        f'<a href="#report-{_slug(name)}">{escape(REPORT_TITLES.get(name, _heading(name)))}</a>'
        for name in reports
    )
    body = "".join(_report(name, sections) for name, sections in reports.items())
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>"
        f"<header><h1>{escape(title)}</h1>{sub}<p>Generated {_utc(generated_at_ms)}</p></header>\n"
        "<main>"
        + (_summary(summary) if summary else "")
        + (f"<nav>{nav}</nav>" if nav else "")
        + (body or '<p class="empty">No reports were run.</p>')
        + "</main>\n<footer>leadpulse · a self-contained file: it needs no network to open</footer>"
        "</body></html>\n"
    )


def write_html_report(path: str | Path, reports: Mapping[str, Sections], **kw: Any) -> Path:
    """Render and write the page (UTF-8, parent directories created); keywords go to ``render_html``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_html(reports, **kw), encoding="utf-8")
    return target
