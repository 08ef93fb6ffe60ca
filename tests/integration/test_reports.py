"""Every report against a synthetic history in embedded ClickHouse. The expected figures are computed
here in plain Python from the same synthetic records, following the definitions in the report modules'
docstrings, never by running SQL."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from typer.testing import CliRunner

from agents.stages import recycle_cause
from leadpulse.cli import app
from sinks.content_catalogue import COLUMNS
from sinks.migrate import migrate
from sinks.query_service import Runner, client_runner
from sinks.reports.content import content_report
from sinks.reports.funnel import PATH, funnel_report
from sinks.reports.health import STAGES, health_report
from sinks.reports.period import DAY_MS, Period
from sinks.reports.plan import plan_report
from sinks.reports.render import render
from sinks.reports.sla import sla_report
from sinks.rows import EVENTS, HOT_LEADS, LEADS, SALES_ACTIVITIES, SLA_EVENTS, STAGE_TRANSITIONS

pytestmark = pytest.mark.integration

H = 3_600_000
SINCE = int(dt.datetime(2031, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
UNTIL = SINCE + 90 * DAY_MS
PERIOD = Period(SINCE, UNTIL)
TARGETS = ("mql", "opportunity", "customer")
TABLES = (
    "events",
    "leads",
    "sales_activities",
    "stage_transitions",
    "sla_events",
    "content",
    "lead_scores",
    "hot_leads",
    "content_usage_daily",
    "funnel_daily",
)

CATALOGUE = [  # content_id, type, stage, url, updated (days before UNTIL)
    ("C1", "blog", "awareness", "https://ex.test/blog/c1", 10),
    ("C2", "whitepaper", "lead", None, 30),
    ("C3", "case_study", "mql", "https://ex.test/cases/c3", 400),
    ("C4", "webinar", "nurturing", "https://ex.test/webinar/c4", 100),
    ("C5", "slide", "sal", None, 800),
    ("C6", "page", "opportunity", "https://ex.test/pricing", 5),
    ("C7", "page", "expansion", "https://ex.test/content?id=7", 20),  # a CMS page: its query names it
]


def page_key(url: str, catalogue_url: str) -> bool:
    """Whether a visited url touches a catalogue url: equal up to the query string, the fragment and a
    trailing slash, or, for a catalogue url with a query string, up to the fragment."""
    if "?" in catalogue_url:
        return url.split("#")[0] == catalogue_url.split("#")[0]
    return url.split("#")[0].split("?")[0].rstrip("/") == catalogue_url.split("#")[0].split("?")[0].rstrip(
        "/"
    )


@dataclass
class History:
    events: list[dict[str, Any]] = field(default_factory=list)
    leads: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    activities: list[dict[str, Any]] = field(default_factory=list)
    sla: list[dict[str, Any]] = field(default_factory=list)
    hot: list[dict[str, Any]] = field(default_factory=list)


def build_history(seed: int = 11) -> History:
    rng = random.Random(seed)
    h = History()
    urls = [c[3] for c in CATALOGUE if c[3] and "?" not in c[3]] + ["https://ex.test/other"]
    n = 0

    def event(kind: str, t: int, lead: str | None, anon: str | None, **fields: Any) -> None:
        nonlocal n
        n += 1
        h.events.append(
            {
                "event_id": f"R-e{n}",
                "event_type": kind,
                "event_time": t,
                "lead_id": lead,
                "anonymous_id": anon,
                "source": "test",
                **fields,
            }
        )

    for i in range(40):
        lead, anon = f"R-L{i}", f"R-A{i}"
        start = SINCE - 5 * DAY_MS + rng.randrange(80 * DAY_MS)
        identified = start + rng.randrange(1, 10) * DAY_MS
        if i % 4 != 3:  # three in four leads identify an earlier anonymous visitor
            h.leads.append(
                {"event_id": f"R-id{i}", "lead_id": lead, "anonymous_id": anon, "event_time": identified}
            )
        for _ in range(rng.randrange(2, 9)):
            t = start + rng.randrange(30 * DAY_MS)
            who = (None, anon) if t < identified and i % 4 != 3 else (lead, None)
            kind = rng.choice(["content_view", "download", "web_visit", "email_click"])
            if kind == "content_view":
                item = rng.choice(["C1", "C2", "C3", "C4", "X9"])
                # Half are page views the browser tracker reported in 1-3 parts (the page hidden between
                # them: a tab switch), sharing page_view_id; some of those pages are the item's catalogue
                # page, so the page's web_visit shares it too. The rest carry no page_view_id (the SDK).
                page_view = f"R-pv{n}" if rng.random() < 0.5 else None
                for part in range(rng.randrange(1, 4) if page_view else 1):
                    event(
                        kind,
                        t + part * 60_000,
                        *who,
                        content_id=item,
                        content_type="blog",
                        dwell_ms=rng.randrange(0, 300_000),
                        percent_viewed=50.0,
                        page_view_id=page_view,
                    )
                page_url = next((c[3] for c in CATALOGUE if c[0] == item), None)
                if page_view and page_url and rng.random() < 0.5:
                    event("web_visit", t - 1_000, *who, url=page_url, page_view_id=page_view)
            elif kind == "download":
                event(kind, t, *who, content_id=rng.choice(["C2", "C3", "C6"]), asset_type="whitepaper")
            elif kind == "web_visit":
                event(kind, t, *who, url=rng.choice(urls))
            else:
                event(kind, t, *who, campaign_id="c", email_id="m", link_url=rng.choice(urls))
        # The journey: along the path, sometimes recycled or disqualified.
        at, stage, seq = start, "awareness", 0
        depth = rng.randrange(1, len(PATH))
        # every 7th lead is a direct inquiry: lead -> mql, skipping nurturing (conversion must stay <= 1)
        skipped = "nurturing" if i % 7 == 0 else None
        for target in [s for s in PATH[1 : depth + 1] if s != skipped]:
            at += rng.randrange(1, 15 * DAY_MS)
            reason = ("inquiry" if skipped else "score_threshold") if target == "mql" else target
            h.transitions.append(
                {
                    "transition_id": f"R-{lead}-{seq}",
                    "lead_id": lead,
                    "from_stage": stage,
                    "to_stage": target,
                    "reason": reason,
                    "occurred_at": at,
                }
            )
            seq += 1
            stage = target
            if target == "mql":
                owner = f"rep{i % 3}" if i % 5 else None
                if i % 8 != 3:  # the rest were late MQLs: no hot lead, no clock
                    h.hot.append(
                        {
                            "notification_id": f"R-{lead}:hot:{seq}",
                            "lead_id": lead,
                            "became_hot_at": at,
                            # direct inquiries get the 1 h clock, the others 24 h
                            "sla_due_at": at + (1 if skipped else 24) * H,
                            "owner": owner,
                        }
                    )
                if i % 6:
                    h.activities.append(
                        {
                            "event_id": f"R-a{i}",
                            "lead_id": lead,
                            # a booked meeting follows a lead up too (agents.sla.FOLLOW_UP_ACTIVITIES)
                            "activity": "meeting_booked" if i % 4 == 1 else "first_touch",
                            "event_time": at + rng.randrange(1, 60) * H,
                            "owner": owner,
                        }
                    )
                for level, frac in (("warning", 0.5), ("breach", 1.0)):
                    if rng.random() < 0.5:
                        h.sla.append(
                            {
                                "timeout_id": f"R-{lead}-{level}",
                                "lead_id": lead,
                                "sla": "hot_lead_follow_up",
                                "level": level,
                                "started_at": at,
                                "due_at": at + 24 * H,
                                "owner": owner,
                                # some fired by a worker catching up on a backlog long after (wall clock)
                                "fired_at": at + int(frac * 24 * H) if i % 9 != 4 else UNTIL + 10 * DAY_MS,
                            }
                        )
            if target == "mql" and rng.random() < 0.25:
                at += rng.randrange(1, 5 * DAY_MS)
                h.transitions.append(
                    {
                        "transition_id": f"R-{lead}-{seq}",
                        "lead_id": lead,
                        "from_stage": "mql",
                        "to_stage": "nurturing",
                        "reason": "recycled",
                        "occurred_at": at,
                        "trigger_event_id": f"R-rej{i}",
                    }
                )
                # the rejection that recycled it: every other one gives no reason (the feedback breach below)
                h.activities.append(
                    {
                        "event_id": f"R-rej{i}",
                        "lead_id": lead,
                        "activity": "rejected",
                        "event_time": at,
                        "reason": None if i % 2 else ["no budget", "bad timing", "wrong contact"][i % 3],
                        "owner": f"rep{i % 3}",
                    }
                )
                if i % 2:  # rejected without a reason: the feedback SLA breached two days later
                    h.sla.append(
                        {
                            "timeout_id": f"R-{lead}-feedback",
                            "lead_id": lead,
                            "sla": "rejection_feedback",
                            "level": "breach",
                            "started_at": at,
                            "due_at": at + 48 * H,
                            "owner": f"rep{i % 3}",
                            "fired_at": at + 48 * H,
                        }
                    )
                seq += 1
                break
        if i % 13 == 0:
            h.transitions.append(
                {
                    "transition_id": f"R-{lead}-{seq}",
                    "lead_id": lead,
                    "from_stage": stage,
                    "to_stage": "disqualified",
                    "reason": "disqualified:student",
                    "occurred_at": at + DAY_MS,
                }
            )
    # a shared device: R-A1 identifies as a second lead later; its events count for the newer lead everywhere
    first = next(p for p in h.leads if p["anonymous_id"] == "R-A1")
    h.leads.append(
        {
            "event_id": "R-id-shared",
            "lead_id": "R-L1b",
            "anonymous_id": "R-A1",
            "event_time": first["event_time"] + DAY_MS,
        }
    )
    # urls as trackers send them: utm tags, fragments, trailing slashes, a CMS page's query
    for k, url in enumerate(
        [
            "https://ex.test/blog/c1?utm_source=news&utm_medium=email",
            "https://ex.test/cases/c3/#results",
            "https://ex.test/pricing/",
            "https://ex.test/content?id=7#top",
            "https://ex.test/content?id=8",  # another CMS page: not C7
            "https://ex.test/content",  # not C7 either
        ]
    ):
        event("web_visit", SINCE + (10 + k) * DAY_MS, f"R-L{2 + k}", None, url=url)
    for j in range(15):  # visitors who never identify
        event(
            "content_view",
            SINCE + rng.randrange(80 * DAY_MS),
            None,
            f"R-anon{j}",
            content_id="C1",
            content_type="blog",
            dwell_ms=1000 * j,
            percent_viewed=10.0,
        )
    return h


def _rows(
    spec_columns: tuple[str, ...], records: list[dict[str, Any]], defaults: dict[str, Any]
) -> list[tuple]:
    return [tuple({**defaults, **r}.get(c) for c in spec_columns) for r in records]


def load_history(client: Client, h: History) -> None:
    origin = {"topic": "t", "partition": 0, "offset": 0}
    client.insert(
        "leadpulse.events",
        _rows(EVENTS.insert_columns, h.events, origin),
        column_names=list(EVENTS.insert_columns),
    )
    # A duplicate delivery of the first 20 events (new offsets, same event ids): reports count them once.
    client.insert(
        "leadpulse.events",
        _rows(EVENTS.insert_columns, h.events[:20], {**origin, "offset": 1}),
        column_names=list(EVENTS.insert_columns),
    )
    client.insert(
        "leadpulse.leads",
        _rows(LEADS.insert_columns, h.leads, {**origin, "source": "form", "flags": []}),
        column_names=list(LEADS.insert_columns),
    )
    client.insert(
        "leadpulse.stage_transitions",
        _rows(
            STAGE_TRANSITIONS.insert_columns, h.transitions, {**origin, "trigger_event_id": "x", "score": 0.0}
        ),
        column_names=list(STAGE_TRANSITIONS.insert_columns),
    )
    client.insert(
        "leadpulse.sales_activities",
        _rows(SALES_ACTIVITIES.insert_columns, h.activities, {**origin, "source": "crm"}),
        column_names=list(SALES_ACTIVITIES.insert_columns),
    )
    client.insert(
        "leadpulse.sla_events",
        _rows(SLA_EVENTS.insert_columns, h.sla, {**origin, "notify": []}),
        column_names=list(SLA_EVENTS.insert_columns),
    )
    client.insert(
        "leadpulse.hot_leads",
        _rows(
            HOT_LEADS.insert_columns,
            h.hot,
            {**origin, "score": 120.0, "fit": 20.0, "behaviour": 100.0, "reason": "r", "signals": "[]"},
        ),
        column_names=list(HOT_LEADS.insert_columns),
    )
    until_day = dt.datetime.fromtimestamp(UNTIL / 1000, dt.UTC).date()
    client.insert(
        "leadpulse.content",
        [
            (
                cid,
                f"Title {cid}",
                kind,
                stage,
                url,
                until_day - dt.timedelta(days=age + 30),
                until_day - dt.timedelta(days=age),
            )
            for cid, kind, stage, url, age in CATALOGUE
        ],
        column_names=list(COLUMNS[:-1]),  # (loaded_at: its default)
    )


@pytest.fixture(scope="module")
def history() -> History:
    return build_history()


@pytest.fixture(scope="module")
def run(clickhouse_dsn: str, history: History) -> Iterator[Runner]:
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    migrate(client)
    for table in TABLES:
        client.command(f"TRUNCATE TABLE IF EXISTS leadpulse.{table}")
    load_history(client, history)
    yield client_runner(client)
    client.close()


# --- independent expectations ---------------------------------------------------------------------------
def linear_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def identity(h: History) -> dict[str, str]:
    latest: dict[str, tuple[int, str]] = {}
    for p in h.leads:
        if (
            p["anonymous_id"]
            and p["event_time"] < UNTIL
            and (p["anonymous_id"] not in latest or p["event_time"] > latest[p["anonymous_id"]][0])
        ):
            latest[p["anonymous_id"]] = (p["event_time"], p["lead_id"])
    return {anon: lead for anon, (_, lead) in latest.items()}


def in_period(t: int) -> bool:
    return SINCE <= t < UNTIL


def view_of(e: dict[str, Any]) -> str:
    """The page view an event belongs to: its page_view_id, else an event is a view of its own."""
    return f"p:{e['page_view_id']}" if e.get("page_view_id") else f"e:{e['event_id']}"


def touches(h: History) -> list[tuple[str, dict[str, Any], str | None]]:
    ident = identity(h)
    out = []
    for e in h.events:
        if not in_period(e["event_time"]):
            continue
        url = e.get("url") or e.get("link_url")
        by_url = [cid for cid, _, _, c_url, _ in CATALOGUE if url and c_url and page_key(url, c_url)]
        item = e.get("content_id") or (by_url[0] if by_url else None)
        if item:
            out.append((item, e, e["lead_id"] or ident.get(e["anonymous_id"] or "")))
    return out


def expected_content(h: History, window_days: int = 30) -> dict[str, dict[str, Any]]:
    trans = defaultdict(list)
    for t in h.transitions:
        if t["occurred_at"] < UNTIL:  # as of --until: a later conversion does not count
            trans[t["lead_id"]].append(t)
    ident = identity(h)
    first_seen: dict[str, int] = {}
    for e in h.events:
        lead = e["lead_id"] or ident.get(e["anonymous_id"] or "")
        if lead and in_period(e["event_time"]):
            first_seen[lead] = min(first_seen.get(lead, e["event_time"]), e["event_time"])
    converted_all = sum(
        any(t["to_stage"] in TARGETS and t["occurred_at"] >= f for t in trans[lead])
        for lead, f in first_seen.items()
    )
    baseline = round(converted_all / len(first_seen), 4)
    items: dict[str, dict[str, Any]] = {}
    per_item = defaultdict(list)
    for item, e, lead in touches(h):
        per_item[item].append((e, lead))
    for item, rows in per_item.items():
        lead_times = defaultdict(list)
        for e, lead in rows:
            if lead:
                lead_times[lead].append(e["event_time"])
        influenced = sum(
            any(
                t["to_stage"] in TARGETS
                and any(x <= t["occurred_at"] <= x + window_days * DAY_MS for x in times)
                for t in trans[lead]
            )
            for lead, times in lead_times.items()
        )
        converted = sum(
            any(t["to_stage"] in TARGETS and t["occurred_at"] >= min(times) for t in trans[lead])
            for lead, times in lead_times.items()
        )
        days = []
        for lead, times in lead_times.items():
            after = [t["occurred_at"] for t in trans[lead] if t["occurred_at"] >= min(times)]
            if after:
                days.append((min(after) - min(times)) / DAY_MS)
        dwell = [e["dwell_ms"] for e, _ in rows if e["event_type"] == "content_view"]
        viewed = {view_of(e) for e, _ in rows if e["event_type"] == "content_view"}
        touched = round(converted / len(lead_times), 4) if lead_times else None
        items[item] = {
            # one page load's web_visit and content_view reports are one view
            "views": len({view_of(e) for e, _ in rows if e["event_type"] in ("content_view", "web_visit")}),
            "downloads": sum(e["event_type"] == "download" for e, _ in rows),
            "clicks": sum(e["event_type"] == "email_click" for e, _ in rows),
            "unique_leads": len(lead_times),
            "influenced_leads": influenced,
            "mean_dwell_seconds": round(sum(dwell) / len(viewed) / 1000, 1) if dwell else None,
            "touched_conversion": touched,
            "all_leads_conversion": baseline,
            "lift": round(touched / baseline, 2) if touched is not None and baseline else None,
            "median_days_to_next_stage": round(linear_quantile(days, 0.5), 2) if days else None,
        }
    return items


def entered(h: History) -> dict[str, int]:
    leads = defaultdict(set)
    for t in h.transitions:
        if in_period(t["occurred_at"]):
            leads[t["to_stage"]].add(t["lead_id"])
            if t["from_stage"] == "awareness":
                leads["awareness"].add(t["lead_id"])
    return {stage: len(ids) for stage, ids in leads.items()}


def advanced(h: History, stage: str) -> int:
    """Leads that entered ``stage`` in the period and reached a later stage of PATH by UNTIL, at or after
    their first entry in the period (skipping stages counts)."""
    entry: dict[str, int] = {}
    for t in h.transitions:
        if in_period(t["occurred_at"]) and stage in (
            t["to_stage"],
            "awareness" if t["from_stage"] == "awareness" else None,
        ):
            entry[t["lead_id"]] = min(entry.get(t["lead_id"], t["occurred_at"]), t["occurred_at"])
    rank = {s: i for i, s in enumerate(PATH)}
    return len(
        {
            t["lead_id"]
            for t in h.transitions
            if t["lead_id"] in entry
            and t["occurred_at"] < UNTIL
            and t["occurred_at"] >= entry[t["lead_id"]]
            and rank.get(t["to_stage"], -1) > rank[stage]
        }
    )


# --- the tests ------------------------------------------------------------------------------------------
def test_content_report_matches_independent_computation(run: Runner, history: History) -> None:
    got = {row["content_id"]: row for row in content_report(run, PERIOD)["content"]}
    want = expected_content(history)
    assert set(got) == set(want)
    assert "X9" in got and got["X9"]["title"] is None  # an id missing from the catalogue still reports
    assert want["C7"]["views"] == 1  # ?id=7#top is C7; ?id=8 and the bare /content are not
    touching = {lead for _, _, lead in touches(history) if lead}
    after = [t for t in history.transitions if t["occurred_at"] >= UNTIL and t["to_stage"] in TARGETS]
    assert any(t["lead_id"] in touching for t in after)  # conversions after --until exist and must not count
    assert any(w["influenced_leads"] > 0 for w in want.values())
    # the history has page views reported in parts, and pages both visited and viewed: views < reports
    reports = defaultdict(int)
    for item, e, _ in touches(history):
        reports[item] += e["event_type"] in ("content_view", "web_visit")
    assert any(want[item]["views"] < count for item, count in reports.items())
    for item, expected in want.items():
        for key, value in expected.items():
            assert got[item][key] == (
                pytest.approx(value, abs=0.011) if isinstance(value, float) else value
            ), (item, key)


def test_content_report_attribution_window_narrows_influence(run: Runner, history: History) -> None:
    got = {row["content_id"]: row["influenced_leads"] for row in content_report(run, PERIOD, 2)["content"]}
    want = {item: row["influenced_leads"] for item, row in expected_content(history, 2).items()}
    assert got == want
    assert sum(want.values()) < sum(r["influenced_leads"] for r in expected_content(history).values())


def test_health_report_flags_unused_and_stale_content_and_stage_coverage(
    run: Runner, history: History
) -> None:
    unused_days, stale_days = 30, 365
    report = health_report(run, PERIOD, unused_days, stale_days)
    window_start = UNTIL - unused_days * DAY_MS
    last: dict[str, int] = {}
    views: dict[str, set[str]] = defaultdict(set)
    for item, e, _ in touches(history):
        if e["event_time"] >= window_start:
            last[item] = max(last.get(item, 0), e["event_time"])
            views[item].add(view_of(e))
    expected_flags = {}
    for cid, _, _stage, _, age in CATALOGUE:
        unused, stale = cid not in last, age > stale_days
        if unused or stale:
            expected_flags[cid] = (unused, stale)
    got = {row["content_id"]: (row["unused"], row["stale"]) for row in report["flagged"]}
    assert got == expected_flags
    assert expected_flags["C5"] == (True, True)
    for row in report["flagged"]:
        assert row["touches"] == len(views[row["content_id"]]), row  # a page view's reports touch once
        if row["content_id"] in last:
            assert row["days_since_touch"] == pytest.approx(
                (UNTIL - last[row["content_id"]]) / DAY_MS, abs=0.06
            )
    # a period narrower than unused_days looks back the same unused_days: the items are what they are
    narrow = health_report(run, Period(UNTIL - 2 * DAY_MS, UNTIL), unused_days, stale_days)
    assert narrow == report
    coverage = {row["funnel_stage"]: row for row in report["coverage"]}
    assert list(coverage) == list(STAGES)
    for stage in STAGES:
        in_stage = [c for c in CATALOGUE if c[2] == stage]
        assert coverage[stage]["items"] == len(in_stage)
        assert coverage[stage]["used"] == sum(c[0] in last for c in in_stage)
        assert coverage[stage]["covered"] == any(c[0] in last and c[4] <= stale_days for c in in_stage)
    assert coverage["customer"]["items"] == 0 and not coverage["customer"]["covered"]


def test_funnel_report_counts_conversion_velocity_and_recycles(run: Runner, history: History) -> None:
    report = funnel_report(run, PERIOD)
    stages = {row["stage"]: row for row in report["stages"]}
    want_entered = entered(history)
    latest: dict[str, tuple[int, str, str]] = {}
    firsts: dict[tuple[str, str], int] = {}
    for t in history.transitions:
        if t["occurred_at"] < UNTIL:
            key = (t["occurred_at"], t["transition_id"], t["to_stage"])
            latest[t["lead_id"]] = max(latest.get(t["lead_id"], key), key)
            k = (t["lead_id"], t["to_stage"])
            firsts[k] = min(firsts.get(k, t["occurred_at"]), t["occurred_at"])
    current = defaultdict(int)
    for _, _, stage in latest.values():
        current[stage] += 1
    for index, stage in enumerate(PATH):
        row = stages[stage]
        assert row["entered"] == want_entered.get(stage, 0), stage
        assert row["current"] == current.get(stage, 0), stage
        if index + 1 < len(PATH):
            nxt = PATH[index + 1]
            here = want_entered.get(stage, 0)
            want_conversion = round(advanced(history, stage) / here, 4) if here else None
            assert row["conversion_to_next"] == want_conversion, stage
            assert want_conversion is None or want_conversion <= 1, stage
            days = [
                (firsts[(lead, nxt)] - at) / DAY_MS
                for (lead, s), at in firsts.items()
                if s == stage
                and (lead, nxt) in firsts
                and firsts[(lead, nxt)] >= at
                and firsts[(lead, nxt)] >= SINCE
            ]
            expected = round(linear_quantile(days, 0.5), 2) if days else None
            assert row["median_days_to_next"] == (pytest.approx(expected, abs=0.011) if days else None), stage
    assert stages["disqualified"]["entered"] == want_entered.get("disqualified", 0) > 0
    recycles = defaultdict(int)
    for t in history.transitions:
        if in_period(t["occurred_at"]) and t["reason"].startswith("recycled"):
            recycles[(t["from_stage"], recycle_cause(t["from_stage"], t["trigger_event_id"]))] += 1
    assert {(r["from_stage"], r["cause"]): r["recycles"] for r in report["recycles"]} == dict(recycles)
    assert recycles
    # feedback: the rejections and lost deals of the period by the stage they moved the lead out of and reason
    moved = {t["trigger_event_id"]: t["from_stage"] for t in history.transitions if "trigger_event_id" in t}
    feedback: dict[tuple[str, str | None, str], list[str]] = defaultdict(list)
    for a in history.activities:
        if a["activity"] in ("rejected", "closed_lost") and in_period(a["event_time"]):
            reason = (a.get("reason") or "").strip() or "(no reason given)"
            feedback[(a["activity"], moved.get(a["event_id"]), reason)].append(a["lead_id"])
    totals = defaultdict(int)
    for (activity, _, _), ids in feedback.items():
        totals[activity] += len(ids)
    got = {
        (r["activity"], r["from_stage"], r["reason"]): (r["count"], r["share"]) for r in report["feedback"]
    }
    assert got == {k: (len(ids), round(len(ids) / totals[k[0]], 4)) for k, ids in feedback.items()}
    assert ("rejected", "mql", "(no reason given)") in got and len(got) > 1


def test_sla_report_follow_up_percentiles_compliance_and_breaches_per_owner(
    run: Runner, history: History
) -> None:
    report = sla_report(run, PERIOD, sla_hours=24)
    answers = defaultdict(list)
    for a in history.activities:
        answers[a["lead_id"]].append(a["event_time"])
    mql_entries = defaultdict(list)
    for t in history.transitions:
        if t["to_stage"] == "mql":
            mql_entries[t["lead_id"]].append(t["occurred_at"])
    hours, within, total = [], 0, 0
    for t in history.transitions:
        if t["to_stage"] == "mql" and in_period(t["occurred_at"]):
            total += 1
            # an answer belongs to the latest MQL before it: the next MQL entry bounds this one's
            bound = min([m for m in mql_entries[t["lead_id"]] if m > t["occurred_at"]], default=math.inf)
            later = [x for x in answers[t["lead_id"]] if t["occurred_at"] <= x < bound]
            if later:
                hours.append((min(later) - t["occurred_at"]) / H)
                within += hours[-1] <= 24
    follow = report["follow_up"][0]
    assert (follow["mqls"], follow["followed_up"], follow["within_sla"]) == (total, len(hours), within)
    assert follow["compliance"] == round(within / total, 4)
    # against each MQL's own clock (its hot lead's due time; late MQLs have none)
    due = {(x["lead_id"], x["became_hot_at"]): x["sla_due_at"] for x in history.hot}
    clocked = [
        (t["occurred_at"], due[(t["lead_id"], t["occurred_at"])], answers[t["lead_id"]])
        for t in history.transitions
        if t["to_stage"] == "mql" and in_period(t["occurred_at"]) and (t["lead_id"], t["occurred_at"]) in due
    ]
    own = sum(any(at <= x <= until for x in answered) for at, until, answered in clocked)
    assert 0 < len(clocked) < total and 0 < own < len(clocked)  # the fixture has all three kinds
    assert (follow["with_own_sla"], follow["within_own_sla"]) == (len(clocked), own)
    assert follow["own_sla_compliance"] == round(own / len(clocked), 4)
    for key, q in (("p50_hours", 0.5), ("p90_hours", 0.9), ("p95_hours", 0.95)):
        assert follow[key] == pytest.approx(linear_quantile(hours, q), abs=0.011), key
    owners: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"warnings": 0, "breaches": 0})
    # the clocks started in the period (same cohort as follow_up), not the worker's wall-clock fired_at
    assert any(in_period(s["started_at"]) and not in_period(s["fired_at"]) for s in history.sla)
    for s in history.sla:
        if in_period(s["started_at"]):
            level = "warnings" if s["level"] == "warning" else "breaches"
            owners[(s["sla"], s["owner"] or "(unassigned)")][level] += 1
    got = {
        (r["sla"], r["owner"]): {"warnings": r["warnings"], "breaches": r["breaches"]}
        for r in report["by_owner"]
    }
    assert got == dict(owners)
    assert ("hot_lead_follow_up", "(unassigned)") in got
    assert any(sla == "rejection_feedback" for sla, _ in got)  # every SLA, not only the follow-up
    # per owner (the hot lead's; the fixture's warnings and breaches carry the same): hot leads, own clock
    hot_owner = {(x["lead_id"], x["became_hot_at"]): x["owner"] or "(unassigned)" for x in history.hot}
    per_owner: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in history.transitions:
        key = (t["lead_id"], t["occurred_at"])
        if t["to_stage"] == "mql" and in_period(t["occurred_at"]) and key in hot_owner:
            per_owner[hot_owner[key]][0] += 1
            per_owner[hot_owner[key]][1] += any(key[1] <= x <= due[key] for x in answers[t["lead_id"]])
    rows = {r["owner"]: r for r in report["owner_compliance"]}
    assert {o: [r["hot_leads"], r["within_own_sla"]] for o, r in rows.items()} == dict(per_owner)
    for (sla, owner), counts in got.items():
        if sla == "hot_lead_follow_up":
            assert (rows[owner]["warnings"], rows[owner]["breaches"]) == (
                counts["warnings"],
                counts["breaches"],
            )
    for key in ("with_own_sla", "within_own_sla", "not_judged_own"):
        assert sum(r[key] for r in rows.values()) == follow[key], key
    for r in rows.values():
        judged = r["with_own_sla"] - r["not_judged_own"]
        assert r["own_sla_compliance"] == (round(r["within_own_sla"] / judged, 4) if judged else None)
    assert len(rows) == 4  # rep0, rep1, rep2 and (unassigned)


def test_plan_reverse_calculation_reproduces_the_model_worked_example() -> None:
    rates = {
        "visitor_to_lead": 0.05,
        "lead_to_mql": 0.10,
        "mql_to_opportunity": 0.25,
        "opportunity_to_customer": 0.5,
    }
    rows = plan_report(None, None, 10_000_000, 1_000_000, rates)["plan"]
    assert [(r["stage"], r["needed"]) for r in rows] == [
        ("customer", 10),
        ("opportunity", 20),
        ("mql", 80),
        ("lead", 800),
        ("awareness", 16_000),
    ]


@pytest.mark.parametrize(
    ("target", "deal_size"), [("10000000", "1000000"), ("10M", "1m"), ("10,000k", "1_000_000")]
)
def test_plan_cli_with_rates_prints_the_worked_example_as_json(target: str, deal_size: str) -> None:
    result = CliRunner().invoke(
        app,
        [
            "report",
            "plan",
            "--target",
            target,
            "--deal-size",
            deal_size,
            "--format",
            "json",
            "--rates",
            "visitor_to_lead=5%,lead_to_mql=10%,mql_to_opportunity=25%,opportunity_to_customer=50%",
        ],
    )
    assert result.exit_code == 0, result.output
    needed = {row["label"]: row["needed"] for row in json.loads(result.output)["plan"]}
    assert needed == {
        "wins": 10,
        "opportunities (deals)": 20,
        "qualified leads (mql)": 80,
        "leads": 800,
        "visitors": 16_000,
    }


def plan_rates(h: History) -> dict[str, float]:
    """The plan's step rates, by the stage stepped into: cohort shares (see sinks/reports/plan.py). Visitor →
    lead: people who visited in the period and were no lead yet when it began, and became one in it."""
    link = identity(h)
    leads_before = {
        t["lead_id"] for t in h.transitions if t["from_stage"] == "awareness" and t["occurred_at"] < SINCE
    }
    people: dict[str, str | None] = {}
    for e in h.events:
        if in_period(e["event_time"]):
            lead = e["lead_id"] or link.get(e["anonymous_id"])
            if lead not in leads_before:
                people[lead or e["anonymous_id"]] = lead
    new_leads = {
        t["lead_id"] for t in h.transitions if t["from_stage"] == "awareness" and in_period(t["occurred_at"])
    }
    rates = {"lead": sum(lead in new_leads for lead in people.values()) / len(people)}
    rank = {s: i for i, s in enumerate(PATH)}
    for above, below in (("lead", "mql"), ("mql", "opportunity"), ("opportunity", "customer")):
        entry: dict[str, int] = {}
        for t in h.transitions:
            if t["to_stage"] == above and in_period(t["occurred_at"]):
                entry[t["lead_id"]] = min(entry.get(t["lead_id"], t["occurred_at"]), t["occurred_at"])
        reached = {
            t["lead_id"]
            for t in h.transitions
            if t["lead_id"] in entry
            and entry[t["lead_id"]] <= t["occurred_at"] < UNTIL
            and rank.get(t["to_stage"], -1) >= rank[below]
        }
        rates[below] = len(reached) / len(entry)
    return rates


def test_plan_with_measured_rates_uses_the_funnel_of_the_period(run: Runner, history: History) -> None:
    shared = [e for e in history.events if e["anonymous_id"] == "R-A1" and in_period(e["event_time"])]
    assert shared  # the shared device's anonymous events count for its newest lead, as in content
    rows = {r["stage"]: r for r in plan_report(run, PERIOD, 5_000_000, 1_000_000)["plan"]}
    rates = plan_rates(history)
    assert all(0 < r <= 1 for r in rates.values()), rates
    chain = ["awareness", "lead", "mql", "opportunity", "customer"]
    needed = 5.0  # carried exact, shown rounded up
    assert rows["customer"]["needed"] == 5
    for below, above in zip(reversed(chain), list(reversed(chain))[1:], strict=False):
        rate = rates[below]
        assert (
            rows[below]["rate_from_previous"] == round(rate, 4) and rows[below]["rate_source"] == "measured"
        )
        needed /= rate
        assert rows[above]["needed"] == math.ceil(needed - 1e-9), above


def test_plan_says_why_a_step_has_no_number(run: Runner, history: History) -> None:
    """A planner must not be left with a column of ``-``: the step whose rate is missing says so."""
    empty = Period(SINCE - 400 * DAY_MS, SINCE - 390 * DAY_MS)  # nothing happened then
    rows = {r["stage"]: r for r in plan_report(run, empty, 5_000_000, 1_000_000)["plan"]}
    assert rows["customer"]["needed"] == 5 and rows["opportunity"]["needed"] is None
    assert rows["customer"]["note"] == (
        "nobody entered opportunity in the period: no rate measured; "
        "give --rates opportunity_to_customer=RATE"
    )
    assert rows["lead"]["note"].startswith("nobody entered awareness in the period")
    assert rows["awareness"]["note"] is None  # the top has no rate of its own
    overridden = plan_report(run, empty, 5e6, 1e6, {"opportunity_to_customer": 0.5})["plan"]
    assert [r["note"] is None for r in overridden][:2] == [True, False]  # an override needs no note
    full = plan_report(run, PERIOD, 5_000_000, 1_000_000)["plan"]
    # every rate measured and above 0; the win rate's says how many deals were still open
    assert all(r["note"] is None for r in full[1:])
    assert full[0]["note"] is None or "still open at --until" in full[0]["note"]


def test_reports_render_as_table_csv_and_json(run: Runner) -> None:
    sections = funnel_report(run, PERIOD)
    assert "== stages" in render(sections, "table")
    assert render(sections, "csv").splitlines()[1].startswith("stage,entered,current")
    assert json.loads(render(sections, "json"))["stages"][0]["stage"] == "awareness"


def test_every_section_keeps_its_columns_when_a_period_has_no_rows(run: Runner) -> None:
    """An empty section still gets its CSV header (a CSV reader given none has no columns at all), with the
    columns the section has when it has rows."""
    empty = Period(SINCE - 400 * DAY_MS, SINCE - 390 * DAY_MS)
    reports = {
        "content": lambda p: content_report(run, p),
        "health": lambda p: health_report(run, p, 30, 365),
        "funnel": lambda p: funnel_report(run, p),
        "sla": lambda p: sla_report(run, p),
    }
    emptied = 0
    for name, report in reports.items():
        full, none = report(PERIOD), report(empty)
        for section, rows in none.items():
            assert full[section], (name, section)  # the fixture fills every section
            expected = list(full[section][0])
            if rows:
                continue
            emptied += 1
            block = render({section: rows}, "csv")
            assert block.splitlines() == [",".join(expected)], (name, section)
            assert json.loads(render({section: rows}, "json")) == {section: []}
    # content, recycles, feedback, by_owner, owner_compliance (health lists the whole catalogue as unused)
    assert emptied == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--target", "ten", "--deal-size", "1M"],
            "error: --target: expected an amount like 10000000, 10M or 250k",
        ),
        (["--target", "10M", "--deal-size", "-1"], "error: --deal-size: must be a positive amount, got '-1'"),
    ],
)
def test_plan_cli_refuses_an_amount_naming_the_option(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["report", "plan", *args, "--rates", "visitor_to_lead=5%"])
    assert result.exit_code == 2
    assert message in result.output
