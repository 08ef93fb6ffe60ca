"""The synthetic traffic generator: reproducible, schema-valid, and true to what it promises (hot leads, SLA
misses, disqualified non-buyers) when its events run through the real scoring core."""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import json
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from agents.core import check_timers, next_deadline, step
from agents.outputs import Output
from agents.rescore import read_history
from agents.rules import load_rules
from agents.sla import FOLLOW_UP_ACTIVITIES as FOLLOW_UPS
from agents.stages import STAGES, recycle_cause
from agents.state import LeadState
from leadpulse.commands import generate_cmds
from schemas.registry import default_registry
from sinks.content_catalogue import parse_entries
from streams.catalogue_file import CatalogueError
from streams.traffic import PERSONAS, TrafficPlan, jsonl_lines, plan_traffic, publish, quotas
from streams.traffic_catalogue import (
    CATALOGUE_COLUMNS,
    GENERATOR_COLUMNS,
    TrafficCatalogueError,
    catalogue_csv,
    catalogue_from_rows,
    catalogue_json,
    read_catalogue_file,
    stale_items,
    write_catalogue,
)

pytestmark = pytest.mark.unit

HOUR = 3_600_000
DAY = 24 * HOUR
START = 1_790_000_000_000
IMMEDIATE_ASSETS = {"catalog", "inquiry", "demo_request"}
NON_BUYERS = ("student", "competitor", "retiree")


@pytest.fixture(scope="module")
def plan() -> TrafficPlan:
    return plan_traffic(seed=11, leads=300, start_ms=START, span_ms=3 * DAY)


def by_lead(plan: TrafficPlan) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    events: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for schema, record in plan.events:
        if record.get("lead_id"):
            events[record["lead_id"]].append((schema, record))
    return events


@dataclass
class CoreRun:
    states: dict[str, LeadState]
    outputs: list[Output]

    def keys(self, schema: str, **match: str) -> set[str]:
        return {
            o.key
            for o in self.outputs
            if o.schema == schema and all(o.record[k] == v for k, v in match.items())
        }


def run_core(plan: TrafficPlan) -> CoreRun:
    """What a worker running alongside the traffic would do: ``step`` per identity key in event-time order
    (following identity forwards), a timer scan whenever a deadline passes (so a follow-up that comes too
    late cannot hide its breach), and a last scan at the plan's end ("now")."""
    rules = load_rules(None)
    states: dict[str, LeadState] = {}
    outputs: list[Output] = []
    deadlines: list[tuple[int, str]] = []

    def scan(until: int) -> None:
        while deadlines and deadlines[0][0] <= until:
            due, key = heapq.heappop(deadlines)
            outputs.extend(check_timers(states[key], rules, due).outputs)
            remember(key)

    def remember(key: str) -> None:
        due = next_deadline(states[key], rules)
        if due is not None:
            heapq.heappush(deadlines, (due, key))

    for schema, event in plan.events:
        scan(event["event_time"] - 1)
        queue = deque([(event.get("lead_id") or event["anonymous_id"], schema, event)])
        while queue:
            key, schema_, event_ = queue.popleft()
            result = step(states.get(key), key, schema_, event_, rules, plan.end_ms)
            states[key] = result.state
            outputs.extend(result.outputs)
            queue.extend((f.key, f.schema, f.event) for f in result.forwards)
            remember(key)
    scan(plan.end_ms)
    return CoreRun(states, outputs)


@pytest.fixture(scope="module")
def core(plan: TrafficPlan) -> CoreRun:
    return run_core(plan)


# --- reproducibility and validity -----------------------------------------------------------------


def test_same_seed_gives_the_identical_plan(plan: TrafficPlan) -> None:
    again = plan_traffic(seed=11, leads=300, start_ms=START, span_ms=3 * DAY)
    assert again.events == plan.events
    assert again.leads == plan.leads and again.sla_misses == plan.sla_misses
    assert again.catalogue == plan.catalogue


def test_another_seed_gives_another_plan(plan: TrafficPlan) -> None:
    other = plan_traffic(seed=12, leads=300, start_ms=START, span_ms=3 * DAY)
    assert other.events != plan.events
    assert not set(other.leads) & set(plan.leads)  # the seed is part of every id


def test_every_record_validates_and_is_already_normalised(plan: TrafficPlan) -> None:
    registry = default_registry()
    for schema, record in plan.events:
        assert registry.validate(schema, record) == record, (schema, record["event_id"])


def test_event_ids_are_unique(plan: TrafficPlan) -> None:
    ids = [record["event_id"] for _, record in plan.events]
    assert len(ids) == len(set(ids))


def test_events_are_in_event_time_order_inside_the_span(plan: TrafficPlan) -> None:
    times = [record["event_time"] for _, record in plan.events]
    assert times == sorted(times)
    assert plan.start_ms <= times[0] and times[-1] <= plan.end_ms


def test_a_span_too_short_for_follow_ups_is_refused() -> None:
    with pytest.raises(ValueError, match="span_ms must be at least"):
        plan_traffic(seed=1, leads=10, start_ms=START, span_ms=HOUR)


# --- volume and personas --------------------------------------------------------------------------


@pytest.mark.parametrize("leads", [0, 1, 5, 11, 12, 37, 300, 1001])
def test_lead_count_is_exactly_the_requested_volume(leads: int) -> None:
    assert sum(quotas(leads).values()) == leads
    generated = plan_traffic(seed=3, leads=leads, start_ms=START, span_ms=DAY)
    assert len(generated.leads) == leads
    assert len(generated.anonymous_visitors) == round(leads * 0.3)


def test_events_grow_with_leads() -> None:
    small = len(plan_traffic(seed=3, leads=100, start_ms=START).events)
    large = len(plan_traffic(seed=3, leads=1000, start_ms=START).events)
    assert 8 * small < large < 12 * small
    assert 5 * 100 < small < 20 * 100  # roughly ten events per lead


def test_every_persona_appears(plan: TrafficPlan) -> None:
    counts = plan.personas()
    assert {p for p, n in counts.items() if n > 0} == set(PERSONAS)


def test_buying_committees_are_several_leads_of_one_company(plan: TrafficPlan) -> None:
    domains: dict[str | None, set[str]] = defaultdict(set)
    for lead in plan.leads.values():
        if lead.persona == "committee":
            domains[lead.company_domain].add(lead.lead_id)
    assert None not in domains
    assert all(len(members) >= 2 for members in domains.values())
    assert any(len(members) >= 3 for members in domains.values())


def test_anonymous_visitors_are_identified_later(plan: TrafficPlan) -> None:
    first_seen: dict[str, int] = {}
    linked = 0
    for schema, record in plan.events:
        anon = record.get("anonymous_id")
        if schema == "lead_identified":
            if anon:
                assert first_seen[anon] < record["event_time"]  # browsed anonymously before
                linked += 1
        elif anon and not record.get("lead_id"):
            first_seen.setdefault(anon, record["event_time"])
    assert linked >= len(plan.leads) // 2


def test_some_anonymous_events_arrive_after_identification(plan: TrafficPlan) -> None:
    linked_at = {
        r["anonymous_id"]: r["event_time"]
        for s, r in plan.events
        if s == "lead_identified" and r["anonymous_id"]
    }
    anonymous_only = [
        r for _, r in plan.events if not r.get("lead_id") and r.get("anonymous_id") in linked_at
    ]
    late = [r for r in anonymous_only if r["event_time"] > linked_at[r["anonymous_id"]]]
    assert late


def test_email_clicks_include_unsubscribes_and_bounces(plan: TrafficPlan) -> None:
    links = [r["link_url"] for s, r in plan.events if s == "email_click"]
    assert any("unsubscribe" in link for link in links)
    assert any(link.startswith("bounce://") for link in links)
    assert sum(1 for link in links if link.startswith("https://")) > len(links) // 2


def test_content_views_carry_dwell_and_share_viewed(plan: TrafficPlan) -> None:
    views = [r for s, r in plan.events if s == "content_view"]
    assert views and all(r["dwell_ms"] > 0 and 0 < r["percent_viewed"] <= 100 for r in views)
    assert {r["channel"] for r in views} >= {"web", "sales"}


# --- sales follow-up and SLA promises -------------------------------------------------------------


def test_sla_misses_have_an_immediate_mql_event_and_no_follow_up_after_it(plan: TrafficPlan) -> None:
    events = by_lead(plan)
    assert plan.sla_misses
    for lead_id in plan.sla_misses:
        lead = plan.leads[lead_id]
        [trigger] = [r for s, r in events[lead_id] if r["event_id"] == lead.mql_event_id]
        assert trigger["asset_type"] in IMMEDIATE_ASSETS
        assert trigger["event_time"] + HOUR <= plan.end_ms  # its 1 h deadline has passed by "now"
        assert not [r for s, r in events[lead_id] if s == "sales_activity" and r["activity"] in FOLLOW_UPS]


def test_followed_hot_leads_get_a_follow_up_after_their_mql_event(plan: TrafficPlan) -> None:
    events = by_lead(plan)
    followed = plan.hot_leads - plan.sla_misses
    assert followed and followed == plan.followed_hot_leads
    for lead_id in followed:
        lead = plan.leads[lead_id]
        assert lead.mql_at is not None
        touches = [
            r["event_time"]
            for s, r in events[lead_id]
            if s == "sales_activity" and r["activity"] in FOLLOW_UPS
        ]
        assert touches and min(touches) > lead.mql_at, lead_id
        assert min(touches) == lead.followed_at


def test_sla_misses_are_exactly_the_follow_up_breaches_of_the_core(plan: TrafficPlan, core: CoreRun) -> None:
    breached = core.keys("sla_timeout", sla="hot_lead_follow_up", level="breach")
    assert breached == plan.sla_misses


def test_planned_hot_leads_are_exactly_the_leads_the_core_notifies(plan: TrafficPlan, core: CoreRun) -> None:
    assert core.keys("hot_lead") == plan.hot_leads


def test_non_buyers_end_disqualified_and_never_hot(plan: TrafficPlan, core: CoreRun) -> None:
    hot = core.keys("hot_lead")
    non_buyers = [lead for lead in plan.leads.values() if lead.persona in NON_BUYERS]
    assert {lead.persona for lead in non_buyers} == set(NON_BUYERS)
    for lead in non_buyers:
        assert core.states[lead.lead_id].stage == "disqualified", lead
        assert lead.lead_id not in hot


def test_leads_reach_every_stage_of_the_funnel(plan: TrafficPlan, core: CoreRun) -> None:
    reached = core.keys("stage_transition")  # any lead with a transition
    stages = {o.record["to_stage"] for o in core.outputs if o.schema == "stage_transition"}
    assert set(STAGES) - {"awareness"} <= stages  # awareness is where leads start
    assert set(plan.leads) <= reached
    recycled = {
        recycle_cause(o.record["from_stage"], o.record["trigger_event_id"])
        for o in core.outputs
        if o.schema == "stage_transition" and o.record["reason"] == "recycled"
    }
    assert {"rejected", "closed_lost"} <= recycled


@pytest.mark.parametrize(("seed", "span_ms"), [(1, 12 * HOUR), (2, DAY), (4, 30 * DAY)])
def test_promises_hold_for_other_seeds_and_spans(seed: int, span_ms: int) -> None:
    other = plan_traffic(seed=seed, leads=150, start_ms=START, span_ms=span_ms)
    run = run_core(other)
    assert run.keys("hot_lead") == other.hot_leads
    assert run.keys("sla_timeout", sla="hot_lead_follow_up", level="breach") == other.sla_misses


# --- content catalogue ----------------------------------------------------------------------------


def test_catalogue_has_unused_items_nobody_touches(plan: TrafficPlan) -> None:
    unused = [item for item in plan.catalogue if item.unused]
    assert len(unused) >= 3
    touched_ids = {r.get("content_id") for _, r in plan.events}
    touched_urls = {r.get("url") for _, r in plan.events} | {r.get("link_url") for _, r in plan.events}
    for item in unused:
        assert item.content_id not in touched_ids and item.url not in touched_urls
    used = [item for item in plan.catalogue if not item.unused]
    assert all(item.content_id in touched_ids or item.url in touched_urls for item in used)


def test_catalogue_has_stale_items_some_still_in_use(plan: TrafficPlan) -> None:
    stale = stale_items(plan.catalogue, plan.end_ms)
    assert any(item.unused for item in stale) and any(not item.unused for item in stale)
    assert len(stale) < len(plan.catalogue) // 2


def test_catalogue_covers_the_funnel_stages(plan: TrafficPlan) -> None:
    stages = {item.funnel_stage for item in plan.catalogue}
    assert stages == {"awareness", "lead", "nurturing", "mql", "sal", "opportunity", "customer", "expansion"}


def test_catalogue_exports_load_with_content_load(plan: TrafficPlan) -> None:
    from_csv = list(csv.DictReader(io.StringIO(catalogue_csv(plan.catalogue))))
    assert tuple(from_csv[0]) == CATALOGUE_COLUMNS + GENERATOR_COLUMNS  # content load's, then the generator's
    from_json = json.loads(catalogue_json(plan.catalogue))
    for entries in (from_csv, from_json):
        rows = parse_entries(entries, loaded_at_ms=0)
        assert [row[0] for row in rows] == [item.content_id for item in plan.catalogue]
        assert [row[6] for row in rows] == [item.updated for item in plan.catalogue]


OWN_ROWS = [
    {"id": "our-blog-1", "title": "Our first post", "type": "blog", "funnel_stage": "awareness",
     "url": "https://corp.example/blog/1", "published": "2024-02-01", "updated": "2024-03-01"},
    {"id": "our-pricing", "title": "Pricing", "type": "pricing_page", "funnel_stage": "mql",
     "url": "https://corp.example/pricing", "published": "2023-01-01"},
    {"id": "our-demo", "title": "Book a demo", "type": "landing", "funnel_stage": "mql",
     "url": "https://corp.example/demo", "published": "2023-01-01", "roles": "immediate",
     "asset_type": "demo_request"},
    {"id": "our-archive", "title": "Old archive", "type": "blog", "funnel_stage": "awareness",
     "url": "https://corp.example/archive", "published": "2015-01-01", "roles": "none"},
]  # fmt: skip


def test_your_own_catalogue_drives_the_traffic_and_builtins_fill_the_gaps() -> None:
    own = catalogue_from_rows(OWN_ROWS)
    plan = plan_traffic(seed=8, leads=200, start_ms=START, span_ms=3 * DAY, catalogue=own)
    ids = {item.content_id for item in plan.catalogue}
    assert {"our-blog-1", "our-pricing", "our-demo", "our-archive"} <= ids
    assert "blog-lead-scoring-101" not in ids and "pricing" not in ids  # replaced by yours
    assert "webinar-scoring-live" in ids  # no webinar of yours: the built-in one stays
    urls = {r.get("url") for _, r in plan.events}
    assert "https://corp.example/pricing" in urls and "https://corp.example/archive" not in urls
    assert "our-demo" in {r.get("content_id") for s, r in plan.events if s == "download"}
    run = run_core(plan)
    assert run.keys("hot_lead") == plan.hot_leads
    assert run.keys("sla_timeout", sla="hot_lead_follow_up", level="breach") == plan.sla_misses


def test_catalogue_rows_errors_name_the_entry_and_column() -> None:
    bad = [
        {"id": "x", "title": "X", "type": "blog", "funnel_stage": "awareness", "published": "2024-01-01"},
        {"id": "y", "title": "Y", "type": "blog", "funnel_stage": "awareness", "url": "u",
         "published": "2024-01-01", "roles": "read;shouting"},
        {"id": "z", "title": "Z", "type": "whitepaper", "funnel_stage": "lead", "url": "u",
         "published": "01/02/2024"},
    ]  # fmt: skip
    with pytest.raises(CatalogueError) as caught:
        catalogue_from_rows(bad, "mine.csv")
    message = str(caught.value)
    assert message.startswith(
        "mine.csv: 3 invalid entries: entry 1 url: missing; entry 2 roles: unknown role"
    )
    assert "entry 2 roles: unknown role 'shouting'" in message
    assert "entry 3 published: '01/02/2024' is not a YYYY-MM-DD date" in message


# --- publishing -----------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def test_publish_sends_every_event_in_order(plan: TrafficPlan) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    stats = publish(plan, lambda schema, record: sent.append((schema, record)))
    assert sent == plan.events and stats.sent == len(plan.events) and stats.complete


def test_publish_paces_at_the_rate(plan: TrafficPlan) -> None:
    fake = FakeTime()
    sent_at: list[float] = []
    stats = publish(plan.events[:50], lambda s, r: sent_at.append(fake.now), rate=10.0,
                    clock=fake.clock, sleep=fake.sleep)  # fmt: skip
    assert stats.sent == 50
    assert sent_at[-1] - sent_at[0] == pytest.approx(4.9)
    assert all(b - a == pytest.approx(0.1) for a, b in itertools.pairwise(sent_at))


def test_publish_stops_when_the_duration_is_up(plan: TrafficPlan) -> None:
    fake = FakeTime()
    stats = publish(plan, lambda s, r: None, rate=20.0, duration_s=2.0, clock=fake.clock, sleep=fake.sleep)
    assert stats.sent == 40 and not stats.complete
    assert stats.elapsed_s == pytest.approx(2.0)


def test_live_publish_stamps_the_send_time_and_keeps_the_plan(plan: TrafficPlan) -> None:
    sent: list[dict[str, Any]] = []
    publish(plan.events[:3], lambda s, r: sent.append(r), live=True, wall_ms=lambda: 42)
    assert [r["event_time"] for r in sent] == [42, 42, 42]
    assert [r["event_id"] for r in sent] == [r["event_id"] for _, r in plan.events[:3]]
    assert plan.events[0][1]["event_time"] != 42


def test_publish_refuses_a_rate_of_zero(plan: TrafficPlan) -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        publish(plan, lambda s, r: None, rate=0)


def test_jsonl_lines_read_back_as_rescore_history(plan: TrafficPlan, tmp_path: Path) -> None:
    path = tmp_path / "traffic.jsonl"
    path.write_text("\n".join(jsonl_lines(plan.events[:200])) + "\n", encoding="utf-8")
    assert list(read_history(path)) == plan.events[:200]
    assert json.loads(path.read_text().splitlines()[0])["type"] == plan.events[0][0]


def test_generate_command_writes_events_catalogue_and_manifest(tmp_path: Path) -> None:
    app = typer.Typer()
    generate_cmds.register(app)
    out, content, manifest = tmp_path / "t.jsonl", tmp_path / "c.csv", tmp_path / "m.json"
    result = CliRunner().invoke(
        app, ["--seed", "5", "--leads", "40", "--out", str(out), "--content-out", str(content),
              "--manifest", str(manifest)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    events = list(read_history(out))
    promised = json.loads(manifest.read_text())
    assert len(events) == promised["events"] and len(promised["leads"]) == 40
    assert set(promised["sla_misses"]) <= set(promised["hot_leads"])
    assert content.read_text().startswith(",".join(CATALOGUE_COLUMNS))
    assert "left without follow-up" in result.output


def test_generate_command_refuses_a_bad_catalogue_naming_the_row(tmp_path: Path) -> None:
    app = typer.Typer()
    generate_cmds.register(app)
    bad = tmp_path / "mine.csv"
    bad.write_text("id,title,type,funnel_stage,published\nx,X,blog,awareness,2024-01-01\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["--catalogue", str(bad), "--out", str(tmp_path / "t.jsonl")])
    assert result.exit_code == 2
    assert f"--catalogue {bad}: 1 invalid entry: entry 1 url: missing" in " ".join(result.output.split())


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_generated_catalogue_in_each_format_is_what_content_load_reads_and_generate_reads_back(
    tmp_path: Path, suffix: str
) -> None:
    """``--content-out x.jsonl`` was written as CSV, which ``content load`` then refused line by line."""
    from sinks.content_catalogue import read_file

    app = typer.Typer()
    generate_cmds.register(app)
    content = tmp_path / f"c{suffix}"
    args = ["--seed", "5", "--leads", "40", "--out", str(tmp_path / "t.jsonl"), "--content-out", str(content)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = plan_traffic(seed=5, leads=40, start_ms=START, span_ms=DAY)
    rows = parse_entries(read_file(content), str(content), loaded_at_ms=0)
    assert sorted(row[0] for row in rows) == sorted(item.content_id for item in plan.catalogue)
    again = CliRunner().invoke(app, ["--catalogue", str(content), "--out", str(tmp_path / "u.jsonl")])
    assert again.exit_code == 0, again.output


def test_generate_refuses_a_catalogue_suffix_content_load_cannot_read_before_doing_any_work(
    tmp_path: Path,
) -> None:
    app = typer.Typer()
    generate_cmds.register(app)
    out = tmp_path / "t.jsonl"
    result = CliRunner().invoke(app, ["--out", str(out), "--content-out", str(tmp_path / "c.txt")])
    assert result.exit_code == 2
    assert "--content-out" in result.output and "expected a .csv, .json, .jsonl file" in result.output
    assert not out.exists() and not (tmp_path / "c.txt").exists()


def test_generate_reading_back_its_own_catalogue_export_keeps_every_item_as_it_was(tmp_path: Path) -> None:
    """The export lost the roles, so reading it back made the integrations page a plain product page and
    the generator stopped with KeyError('integration')."""
    plan = plan_traffic(seed=5, leads=40, start_ms=START, span_ms=DAY)
    path = tmp_path / "c.csv"
    write_catalogue(plan.catalogue, path)
    assert read_catalogue_file(path) == plan.catalogue
    again = plan_traffic(seed=5, leads=40, start_ms=START, span_ms=DAY, catalogue=read_catalogue_file(path))
    assert again.events == plan.events


def test_a_catalogue_whose_ids_hide_a_built_in_pool_is_refused_naming_the_pool() -> None:
    rows = [
        {"id": "product-integrations", "title": "Ours", "type": "blog", "funnel_stage": "awareness",
         "url": "https://x.example/i", "published": "2026-01-01"},
    ]  # fmt: skip
    with pytest.raises(TrafficCatalogueError, match="no item serves the 'integration' pool"):
        plan_traffic(seed=1, leads=5, start_ms=START, span_ms=DAY, catalogue=catalogue_from_rows(rows))
