"""Inline SVG charts for the offline HTML report: pure functions from numbers to SVG text.

Why hand-written SVG rather than a charting library: the report must open from a file with no network and
no JavaScript, and a few rects and labels are all these charts need. Every mark a reader sees is a
``<rect class="bar">`` carrying ``data-value`` and a ``<title>`` (the browser's own tooltip, no script), so
tests and readers find the same things; every piece of text passes through ``html.escape``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 560
LABEL_W = 170  # category labels, right-aligned against the plot
VALUE_W = 70  # value labels after the longest bar
PLOT_W = WIDTH - LABEL_W - VALUE_W
FONT = 12
BAR_H = 14
BAR_GAP = 3
GROUP_GAP = 12
LABEL_CHARS = 20  # what fits in LABEL_W at FONT; the full label stays in the tooltip

BLUE, TEAL, AMBER, RED, GREEN, SLATE = "#2563eb", "#0d9488", "#d97706", "#dc2626", "#16a34a", "#cbd5e1"
INK, MUTED = "#1f2937", "#6b7280"
DASH = "\u2013"  # what a missing value is drawn as

Formatter = Callable[[float], str]


def is_number(value: object) -> bool:
    """True for ints and finite floats; bools and NaN (what chDB returns for an empty quantile) are not."""
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def format_number(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.4g}"


def format_percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def format_days(value: float) -> str:
    return f"{value:,.1f} d"


def format_hours(value: float) -> str:
    return f"{value:,.1f} h"


@dataclass(frozen=True)
class Series:
    """One colour of bars: a value (or None, drawn as a dash) per category."""

    label: str
    values: Sequence[float | None]
    color: str


@dataclass(frozen=True)
class Step:
    """One funnel stage; ``rate_to_next`` is written on the connector to the next stage."""

    label: str
    value: float | None
    rate_to_next: float | None = None


def clip(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(
    x: float,
    y: float,
    content: str,
    *,
    anchor: str = "start",
    color: str = INK,
    extra: str = "",
    tip: str | None = None,
) -> str:
    title = f"<title>{escape(tip)}</title>" if tip else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" dominant-baseline="central" '
        f'fill="{color}"{extra}>{escape(content)}{title}</text>'
    )


def _rect(
    x: float, y: float, w: float, h: float, color: str, value: float, tip: str, cls: str = "bar"
) -> str:
    return (
        f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="2" '
        f'fill="{color}" data-value="{value:g}"><title>{escape(tip)}</title></rect>'
    )


def _svg(chart: str, title: str, height: float, body: Sequence[str]) -> str:
    return (
        f'<svg class="chart" data-chart="{escape(chart)}" viewBox="0 0 {WIDTH} {height:.0f}" '
        f'width="{WIDTH}" height="{height:.0f}" role="img" aria-label="{escape(title)}" '
        f'font-size="{FONT}">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _legend(series: Sequence[Series], y: float) -> list[str]:
    out, x = [], float(LABEL_W)
    for s in series:
        out.append(
            f'<rect class="key" x="{x:.1f}" y="{y - 5:.1f}" width="10" height="10" rx="2" fill="{s.color}"/>'
        )
        out.append(_text(x + 14, y, s.label, color=MUTED))
        x += 14 + len(s.label) * 6.6 + 18
    return out


def _scale(series: Sequence[Series], *extra: float) -> float:
    values = [v for s in series for v in s.values if v is not None and is_number(v)]
    return max([*values, *extra, 0.0]) or 1.0


def _bar_rows(
    categories: Sequence[str], series: Sequence[Series], top: float, fmt: Formatter, y: float
) -> tuple[list[str], float]:
    """Grouped horizontal bars from ``y`` down; returns the SVG pieces and the y after the last group."""
    out: list[str] = []
    for index, category in enumerate(categories):
        group_h = len(series) * (BAR_H + BAR_GAP) - BAR_GAP
        label = clip(category)
        tip = category if label != category else None
        out.append(_text(LABEL_W - 8, y + group_h / 2, label, anchor="end", extra=' class="label"', tip=tip))
        for s in series:
            value = s.values[index] if index < len(s.values) else None
            if value is None or not is_number(value):
                out.append(_text(LABEL_W + 4, y + BAR_H / 2, DASH, color=MUTED))
            else:
                width = PLOT_W * max(value, 0) / top
                width = max(width, 1.0) if value > 0 else 0.0
                out.append(
                    _rect(LABEL_W, y, width, BAR_H, s.color, value, f"{category} · {s.label}: {fmt(value)}")
                )
                out.append(_text(LABEL_W + width + 4, y + BAR_H / 2, fmt(value), color=MUTED))
            y += BAR_H + BAR_GAP
        y += GROUP_GAP - BAR_GAP
    return out, y


def _reference_line(value: float, label: str, top: float, y0: float, y1: float) -> list[str]:
    x = LABEL_W + PLOT_W * value / top
    return [
        f'<line class="reference" x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" stroke="{RED}" '
        f'stroke-width="1.5" stroke-dasharray="4 3"/>',
        _text(x, y0 - 8, label, anchor="middle", color=RED),
    ]


def bar_chart(
    chart: str,
    title: str,
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    fmt: Formatter = format_number,
    reference: tuple[float, str] | None = None,
) -> str:
    """Horizontal bars, one group per category and one bar per series, on a shared linear scale from zero.

    ``reference`` draws a dashed vertical line (e.g. the SLA target) that the scale always includes.
    """
    top = _scale(series, reference[0] if reference else 0.0)
    body: list[str] = []
    y = 8.0
    if len(series) > 1:
        body += _legend(series, y + 4)
        y += 22
    if reference:
        y += 16
    bars, end = _bar_rows(categories, series, top, fmt, y)
    body.append(
        f'<line x1="{LABEL_W}" y1="{y - 4:.1f}" x2="{LABEL_W}" y2="{end - GROUP_GAP + 4:.1f}" '
        f'stroke="{SLATE}"/>'
    )
    body += bars
    if reference:
        body += _reference_line(reference[0], reference[1], top, y - 4, end - GROUP_GAP + 4)
    return _svg(chart, title, end, body)


def funnel_chart(chart: str, title: str, steps: Sequence[Step], *, fmt: Formatter = format_number) -> str:
    """Centred bars as wide as each stage's count, joined by connectors labelled with the conversion rate."""
    step_h, link_h = 26.0, 22.0
    center = LABEL_W + PLOT_W / 2
    top = max([s.value for s in steps if s.value is not None and is_number(s.value)] + [0.0]) or 1.0
    body: list[str] = []
    rates: list[str] = []  # drawn last, over the connectors
    y = 8.0
    previous: tuple[float, float] | None = None  # (width, bottom y) of the last drawn bar
    for index, step in enumerate(steps):
        mid = y + step_h / 2
        label = clip(step.label)
        tip = step.label if label != step.label else None
        body.append(_text(LABEL_W - 8, mid, label, anchor="end", extra=' class="label"', tip=tip))
        width: float | None = None
        if step.value is not None and is_number(step.value):
            width = max(PLOT_W * max(step.value, 0) / top, 2.0)
            if previous is not None:
                pw, py = previous
                body.append(
                    f'<polygon class="link" points="{center - pw / 2:.1f},{py:.1f} '
                    f"{center + pw / 2:.1f},{py:.1f} "
                    f'{center + width / 2:.1f},{y:.1f} {center - width / 2:.1f},{y:.1f}" fill="#dbeafe"/>'
                )
            tip = f"{step.label}: {fmt(step.value)}"
            body.append(_rect(center - width / 2, y, width, step_h, BLUE, step.value, tip))
            body.append(_text(WIDTH - VALUE_W + 8, mid, fmt(step.value), extra=' font-weight="600"'))
        else:
            body.append(_text(WIDTH - VALUE_W + 8, mid, DASH, color=MUTED))
        previous = (width, y + step_h) if width is not None else None
        y += step_h
        if index + 1 < len(steps):
            rate = step.rate_to_next
            label = f"↓ {format_percent(rate)}" if rate is not None and is_number(rate) else ""
            if label:
                halo = ' class="rate" paint-order="stroke" stroke="#fff" stroke-width="3"'
                rates.append(_text(center, y + link_h / 2, label, anchor="middle", extra=halo))
            y += link_h
    return _svg(chart, title, y + 8, body + rates)


def _meter_color(rate: float) -> str:
    return GREEN if rate >= 0.9 else AMBER if rate >= 0.7 else RED


@dataclass(frozen=True)
class Meter:
    """One compliance meter: a share 0..1 (None: drawn as a dash). The headline is drawn taller, its value
    bold; the others under it, as context."""

    label: str
    value: float | None
    tip: str
    headline: bool = False


def compliance_chart(
    chart: str,
    title: str,
    meters: Sequence[Meter],
    percentiles: Sequence[tuple[str, float | None]],
    sla_hours: float,
) -> str:
    """Compliance meters (shares followed up in time: the headline first) over follow-up time percentiles,
    with the SLA drawn as a reference line so a reader sees at once which percentile misses it."""
    body: list[str] = []
    y = 10.0
    for meter in meters:
        height = BAR_H + 4 if meter.headline else BAR_H
        weight = ' font-weight="600"' if meter.headline else ""
        body.append(_text(LABEL_W - 8, y + height / 2, meter.label, anchor="end", extra=' class="label"'))
        body.append(
            f'<rect class="track" x="{LABEL_W}" y="{y:.1f}" width="{PLOT_W}" height="{height}" rx="3" '
            'fill="#f1f5f9"/>'
        )
        value = meter.value
        if value is not None and is_number(value):
            width = PLOT_W * min(max(value, 0.0), 1.0)
            body.append(_rect(LABEL_W, y, width, height, _meter_color(value), value, meter.tip))
            body.append(_text(LABEL_W + PLOT_W + 6, y + height / 2, format_percent(value), extra=weight))
        else:
            body.append(_text(LABEL_W + PLOT_W + 6, y + height / 2, DASH, color=MUTED))
        y += height + 8
    y += 32
    series = [Series("follow-up time", [v for _, v in percentiles], BLUE)]
    top = _scale(series, sla_hours)
    bars, end = _bar_rows([name for name, _ in percentiles], series, top, format_hours, y)
    body += bars
    body += _reference_line(sla_hours, f"SLA {sla_hours:g} h", top, y - 4, end - GROUP_GAP + 4)
    return _svg(chart, title, end, body)
