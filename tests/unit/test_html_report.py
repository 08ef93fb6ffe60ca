"""The offline HTML report: one self-contained page whose charts and tables show the report rows, with
every piece of data escaped. Read back with the standard library's HTML parser, which tokenises as a
browser does."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import pytest

from sinks.reports.charts import LABEL_CHARS, PLOT_W
from sinks.reports.html import render_html

pytestmark = pytest.mark.unit

T = 1_924_992_000_000  # 2031-01-01 00:00 UTC
HOSTILE = '<script>alert("x")</script> & friends'


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    chart: str | None  # data-chart of the enclosing svg


class Page(HTMLParser):
    """Start tags (with the chart they sit in) and text nodes, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.texts: list[str] = []
        self.chart: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "svg":
            self.chart = values.get("data-chart")
        self.elements.append(Element(tag, values, self.chart))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.chart = None

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.texts.append(data)

    def bars(self, chart: str) -> list[Element]:
        return [e for e in self.elements if e.chart == chart and e.attrs.get("class") == "bar"]

    def tags(self, tag: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag]


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def page_of(reports: dict[str, Any], **kw: Any) -> tuple[str, Page]:
    html = render_html(reports, title=kw.pop("title", "leadpulse report"), generated_at_ms=T, **kw)
    return html, parse(html)


def content_row(i: int, **over: Any) -> dict[str, Any]:
    return {
        "content_id": f"C{i}",
        "title": f"Item {i}",
        "content_type": "blog",
        "funnel_stage": "awareness",
        "views": 10 * i,
        "unique_leads": 5 * i,
        "downloads": 0,
        "clicks": 1,
        "influenced_leads": i,
        "mean_dwell_seconds": 12.5,
        "touched_conversion": 0.25,
        "all_leads_conversion": 0.2,
        "lift": 1.25,
        "median_days_to_next_stage": None,
        **over,
    }


def stage_row(
    stage: str, entered: int, nxt: str | None, conv: float | None, days: float | None
) -> dict[str, Any]:
    return {
        "stage": stage,
        "entered": entered,
        "current": 1,
        "next_stage": nxt,
        "conversion_to_next": conv,
        "median_days_to_next": days,
    }


FUNNEL: dict[str, list[dict[str, Any]]] = {
    "stages": [
        stage_row("awareness", 100, "lead", 0.5, None),
        stage_row("lead", 50, "nurturing", 0.8, 2.0),
        stage_row("nurturing", 40, "mql", 0.5, 4.0),
        stage_row("mql", 20, "sal", 0.5, 1.0),
        stage_row("sal", 10, "opportunity", 0.5, 3.0),
        stage_row("opportunity", 5, "customer", 0.4, 8.0),
        stage_row("customer", 2, "expansion", 0.0, None),
        stage_row("expansion", 0, None, None, None),
        stage_row("disqualified", 7, None, None, None),
    ],
    "recycles": [{"from_stage": "mql", "cause": "rejected", "recycles": 3}],
}
SLA: dict[str, list[dict[str, Any]]] = {
    "follow_up": [
        {
            "mqls": 16,
            "followed_up": 15,
            "within_sla": 13,
            "sla_hours": 24.0,
            "compliance": 0.8125,
            "p50_hours": 5.5,
            "p90_hours": 20.0,
            "p95_hours": 30.25,
        }
    ],
    "by_owner": [
        {"owner": "rep1", "warnings": 2, "breaches": 3},
        {"owner": HOSTILE, "warnings": 1, "breaches": 0},
    ],
}


def test_page_is_one_self_contained_document_that_loads_nothing() -> None:
    html, page = page_of({"funnel": FUNNEL, "sla": SLA}, subtitle="last 30 days")
    assert html.startswith("<!doctype html>")
    assert [e.attrs.get("http-equiv") for e in page.tags("meta") if "http-equiv" in e.attrs] == [
        "Content-Security-Policy"
    ]
    assert "default-src 'none'" in html
    assert page.tags("script") == page.tags("link") == page.tags("img") == page.tags("iframe") == []
    assert not any(
        "src" in e.attrs or ("href" in e.attrs and not e.attrs["href"].startswith("#")) for e in page.elements
    )
    assert "url(" not in html and "@import" not in html and "http://" not in html and "https://" not in html
    assert "leadpulse report" in page.texts and "last 30 days" in page.texts
    assert "Generated 2031-01-01 00:00 UTC" in page.texts


def test_hostile_strings_in_titles_and_owners_stay_text() -> None:
    html, page = page_of({"content": {"content": [content_row(1, title=HOSTILE)]}, "sla": SLA})
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert page.tags("script") == []
    assert HOSTILE in page.texts  # the table cells, read back as the exact text
    assert page.texts.count(HOSTILE) == 4  # content title (table, chart tooltip), SLA owner (same)


def test_empty_sections_show_a_note_and_draw_no_marks() -> None:
    empty_sla = {"follow_up": [{**SLA["follow_up"][0], "mqls": 0, "compliance": None}], "by_owner": []}
    reports = {
        "content": {"content": []},
        "funnel": {
            "stages": [stage_row(s, 0, None, None, None) for s in ("awareness", "lead")],
            "recycles": [],
        },
        "sla": empty_sla,
        "health": {"flagged": [], "coverage": []},
        "plan": {"plan": []},
    }
    _, page = page_of(reports)
    assert [e for e in page.elements if e.attrs.get("class") == "bar"] == []
    assert page.tags("svg") == []
    assert (
        page.texts.count("No rows in this period.") == 6
    )  # content, recycles, by_owner, flagged, coverage, plan
    for note in (
        "No content was touched in this period.",
        "No stage changes.",
        "No lead became MQL in this period.",
    ):
        assert note in page.texts


def test_no_reports_still_make_a_page() -> None:
    _, page = page_of({})
    assert "No reports were run." in page.texts


def test_numbers_have_separators_ratios_are_percentages_and_missing_values_a_dash() -> None:
    row = content_row(3, views=12345, median_days_to_next_stage=math.nan, touched_conversion=0.4567)
    _, page = page_of(
        {"content": {"content": [row]}, "sla": SLA},
        summary={"events": 1234567, "compliance": "81%", "mean score": 42.125},
    )
    assert "12,345" in page.texts
    assert "45.7%" in page.texts  # touched conversion
    assert page.texts.count("81.2%") == 2  # SLA compliance (0.8125), in the chart and the table
    assert "1,234,567" in page.texts and "81%" in page.texts and "42.12" in page.texts
    assert "30.25" in page.texts  # p95 hours in the table
    assert "\u2013" in page.texts  # NaN median shown as a dash
    stats = [e for e in page.elements if e.attrs.get("class") == "stat"]
    assert len(stats) == 3


def test_content_chart_draws_the_top_ten_items_three_bars_each_on_one_scale() -> None:
    rows = [content_row(i) for i in range(12, 0, -1)]  # as the report sorts: most influential first
    _, page = page_of({"content": {"content": rows}})
    bars = page.bars("content-performance")
    assert len(bars) == 30
    widths = {float(b.attrs["data-value"]): float(b.attrs["width"]) for b in bars}
    assert widths[120.0] == pytest.approx(PLOT_W, abs=0.1)  # views of item 12, the largest value
    assert widths[60.0] == pytest.approx(PLOT_W / 2, abs=0.1)
    assert len(page.tags("tr")) == 13  # header + every row, not only the charted ten


def test_long_labels_are_clipped_in_the_chart_with_the_whole_title_as_tooltip() -> None:
    title = "A very long content title that cannot fit the label column"
    _, page = page_of({"content": {"content": [content_row(1, title=title)]}})
    clipped = title[: LABEL_CHARS - 1] + "…"
    assert clipped in page.texts and title in page.texts


def test_funnel_chart_shows_path_stages_with_conversion_between_them() -> None:
    _, page = page_of({"funnel": FUNNEL})
    bars = page.bars("funnel")
    assert [float(b.attrs["data-value"]) for b in bars] == [100, 50, 40, 20, 10, 5, 2, 0]  # no disqualified
    assert "↓ 50.0%" in page.texts and "↓ 80.0%" in page.texts and "↓ 0.0%" in page.texts
    links = [e for e in page.elements if e.chart == "funnel" and e.tag == "polygon"]
    assert len(links) == 7


def test_velocity_chart_has_a_bar_per_timed_stage_pair() -> None:
    _, page = page_of({"funnel": FUNNEL})
    bars = page.bars("velocity")
    assert [float(b.attrs["data-value"]) for b in bars] == [2.0, 4.0, 1.0, 3.0, 8.0]
    assert "lead → nurturing" in page.texts and "8.0 d" in page.texts


def test_sla_chart_shows_compliance_percentiles_against_the_sla_and_breaches_per_owner() -> None:
    _, page = page_of({"sla": SLA})
    meter, *percentiles = page.bars("sla-compliance")
    assert float(meter.attrs["data-value"]) == 0.8125
    assert float(meter.attrs["width"]) == pytest.approx(PLOT_W * 0.8125, abs=0.1)
    assert [float(b.attrs["data-value"]) for b in percentiles] == [5.5, 20.0, 30.25]
    reference = [
        e for e in page.elements if e.chart == "sla-compliance" and e.attrs.get("class") == "reference"
    ]
    assert len(reference) == 1 and "SLA 24 h" in page.texts
    # the p95 (30.25 h) sets the scale: the 24 h line sits at 24/30.25 of the plot
    assert float(reference[0].attrs["x1"]) - float(meter.attrs["x"]) == pytest.approx(
        PLOT_W * 24 / 30.25, abs=0.1
    )
    owners = page.bars("sla-owners")
    assert [float(b.attrs["data-value"]) for b in owners] == [3, 2, 0, 1]  # breaches then warnings per owner


def test_funnel_feedback_shows_why_leads_were_rejected_and_deals_lost() -> None:
    """The closed loop: a bar per activity and reason (stages summed), the table under it with shares as
    percentages, and a reason from the CRM kept as text."""
    feedback = [
        {
            "activity": "rejected",
            "from_stage": "mql",
            "reason": "(no reason given)",
            "count": 3,
            "share": 0.5,
            "leads": 3,
        },
        {
            "activity": "rejected",
            "from_stage": "mql",
            "reason": HOSTILE,
            "count": 2,
            "share": 0.3333,
            "leads": 2,
        },
        {
            "activity": "rejected",
            "from_stage": "sal",
            "reason": "(no reason given)",
            "count": 1,
            "share": 0.1667,
            "leads": 1,
        },
        {
            "activity": "closed_lost",
            "from_stage": "opportunity",
            "reason": "price",
            "count": 1,
            "share": 1.0,
            "leads": 1,
        },
    ]
    html, page = page_of({"funnel": {**FUNNEL, "feedback": feedback}})
    bars = page.bars("feedback")
    assert [float(b.attrs["data-value"]) for b in bars] == [4, 2, 1]
    assert "rejected: (no reason given)" in page.texts and "lost: price" in page.texts
    texts = [t.strip() for t in page.texts]
    assert "Feedback from sales" in texts and "feedback" in texts  # the chart and the table
    assert "33.3%" in page.texts and "16.7%" in page.texts  # shares as percentages
    assert "<script>" not in html and HOSTILE in page.texts
    _, none = page_of({"funnel": {**FUNNEL, "feedback": []}})
    assert none.bars("feedback") == [] and "No rejections or lost deals in this period." in none.texts


def test_sla_owner_compliance_chart_shows_each_owners_own_clock_share() -> None:
    owners = [
        {
            "owner": "carl",
            "hot_leads": 1,
            "with_own_sla": 1,
            "within_own_sla": 0,
            "not_judged_own": 0,
            "own_sla_compliance": 0.0,
            "warnings": 0,
            "breaches": 1,
        },
        {
            "owner": HOSTILE,
            "hot_leads": 3,
            "with_own_sla": 3,
            "within_own_sla": 1,
            "not_judged_own": 0,
            "own_sla_compliance": 0.3333,
            "warnings": 2,
            "breaches": 2,
        },
        {
            "owner": "ben",
            "hot_leads": 1,
            "with_own_sla": 1,
            "within_own_sla": 0,
            "not_judged_own": 1,
            "own_sla_compliance": None,
            "warnings": 0,
            "breaches": 0,
        },
    ]
    html, page = page_of({"sla": {**SLA, "owner_compliance": owners}})
    bars = page.bars("sla-owner-compliance")
    assert [float(b.attrs["data-value"]) for b in bars] == [0.0, 0.3333]  # nothing to judge for ben: no bar
    assert "carl (1 hot)" in page.texts and "33.3%" in page.texts
    assert "<script>" not in html
    texts = [t.strip() for t in page.texts]
    assert "owner compliance" in texts and "Compliance per owner" in texts  # the table and the chart


def test_sla_chart_headline_is_the_own_clock_compliance_with_the_flat_one_labelled_beside_it() -> None:
    """The own-clock share (each MQL against its own deadline: 1 h inquiries) is the meter drawn first and
    taller, with its value in bold; the flat --sla-hours share is the second meter, labelled as flat."""
    sla = {**SLA, "follow_up": [{**SLA["follow_up"][0], "own_sla_compliance": 0.625}]}
    _, page = page_of({"sla": sla})
    own, flat, *percentiles = page.bars("sla-compliance")
    assert (float(own.attrs["data-value"]), float(flat.attrs["data-value"])) == (0.625, 0.8125)
    assert float(own.attrs["width"]) == pytest.approx(PLOT_W * 0.625, abs=0.1)
    assert float(own.attrs["height"]) > float(flat.attrs["height"]) and float(own.attrs["y"]) < float(
        flat.attrs["y"]
    )
    assert [float(b.attrs["data-value"]) for b in percentiles] == [5.5, 20.0, 30.25]
    assert "within own SLA" in page.texts and "within 24 h (flat)" in page.texts
    bold = [e for e in page.elements if e.chart == "sla-compliance" and e.attrs.get("font-weight") == "600"]
    assert len(bold) == 1 and "62.5%" in page.texts and "81.2%" in page.texts


def test_plan_chart_runs_top_down_from_visitors_to_wins() -> None:
    plan = [
        {"stage": "customer", "label": "wins", "needed": 10, "rate_from_previous": 0.5},
        {"stage": "opportunity", "label": "opportunities", "needed": 20, "rate_from_previous": 0.25},
        {"stage": "mql", "label": "mqls", "needed": 80, "rate_from_previous": None},
        {"stage": "lead", "label": "leads", "needed": None, "rate_from_previous": None},
    ]
    _, page = page_of({"plan": {"plan": plan}})
    assert [float(b.attrs["data-value"]) for b in page.bars("plan")] == [80, 20, 10]
    assert "↓ 25.0%" in page.texts and "↓ 50.0%" in page.texts


def test_a_report_without_charts_still_gets_its_tables() -> None:
    _, page = page_of({"custom thing": {"rows": [{"a": 1, "b": "x"}, {"a": 2, "c": True}]}})
    assert page.tags("svg") == []
    assert [e.attrs.get("title") for e in page.tags("th")] == ["a", "b", "c"]
    assert "yes" in page.texts and "Custom thing" in page.texts


def test_demo_report_summary_strip_leads_with_the_own_clock_compliance(tmp_path: Any) -> None:
    """The demo's HTML summary: after the counts, the own-clock compliance, then the flat one, labelled."""
    from types import SimpleNamespace

    from leadpulse.commands.demo_cmds import _write_html

    follow = {**SLA["follow_up"][0], "own_sla_compliance": 0.625}
    result = SimpleNamespace(published=1000, hot_leads=16, webhooks_delivered=16, sla_breaches=3)
    path = _write_html(tmp_path / "demo.html", {"sla": {**SLA, "follow_up": [follow]}}, result)
    assert path is not None
    page = parse(path.read_text(encoding="utf-8"))
    stats = page.texts[page.texts.index("1,000") :][:12]
    assert stats[-4:] == ["62.5%", "SLA compliance (own clock)", "81.2%", "within 24 h (flat)"]
