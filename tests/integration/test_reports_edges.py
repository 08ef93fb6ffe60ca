"""Report edge cases an analyst review found, each on a few hand-written rows in embedded ClickHouse: the
figures are worked out in the comments, never by running SQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from typer.testing import CliRunner

from leadpulse.cli import app
from sinks.content_catalogue import COLUMNS
from sinks.migrate import migrate
from sinks.query_service import Runner, client_runner
from sinks.reports.content import content_report
from sinks.reports.funnel import funnel_report
from sinks.reports.health import health_report
from sinks.reports.period import DAY_MS, Period, make_period
from sinks.reports.plan import measured_rates
from sinks.reports.sla import sla_report
from sinks.rows import EVENTS, HOT_LEADS, LEADS, SALES_ACTIVITIES, SLA_EVENTS, STAGE_TRANSITIONS, TableSpec

pytestmark = pytest.mark.integration

H = 3_600_000
T0 = int(dt.datetime(2035, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
SPECS = {
    spec.table: spec for spec in (EVENTS, LEADS, SALES_ACTIVITIES, STAGE_TRANSITIONS, SLA_EVENTS, HOT_LEADS)
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "events": {"source": "test"},
    "leads": {"source": "form", "flags": []},
    "sales_activities": {"source": "crm"},
    "stage_transitions": {"trigger_event_id": "x", "score": 0.0, "reason": "r"},
    "sla_events": {"notify": []},
    "hot_leads": {"score": 120.0, "fit": 20.0, "behaviour": 100.0, "reason": "r", "signals": "[]"},
}
TABLES = (*SPECS, "content", "lead_scores", "content_usage_daily", "funnel_daily")


class Db:
    """Inserts rows into an emptied leadpulse database and runs the reports on it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.run: Runner = client_runner(client)

    def clear(self) -> None:
        for table in TABLES:
            self.client.command(f"TRUNCATE TABLE IF EXISTS leadpulse.{table}")

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        spec: TableSpec = SPECS[table]
        origin = {"topic": "t", "partition": 0, "offset": 0}
        self.client.insert(
            spec.qualified,
            [tuple({**origin, **DEFAULTS[table], **r}.get(c) for c in spec.insert_columns) for r in rows],
            column_names=list(spec.insert_columns),
        )

    def path(self, lead: str, moves: list[tuple[str, int]]) -> None:
        """A lead's moves from awareness on, (to_stage, at); ids ``lead:seq`` as the worker makes them."""
        rows, stage = [], "awareness"
        for seq, (to, at) in enumerate(moves):
            rows.append(
                {
                    "transition_id": f"{lead}:{seq}",
                    "lead_id": lead,
                    "from_stage": stage,
                    "to_stage": to,
                    "occurred_at": at,
                }
            )
            stage = to
        self.insert("stage_transitions", rows)


@pytest.fixture(scope="module")
def client(clickhouse_dsn: str) -> Iterator[Client]:
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    migrate(client)
    yield client
    client.close()


@pytest.fixture
def db(client: Client) -> Db:
    db = Db(client)
    db.clear()
    return db


# A lead recycled back and forth has ten moves and more; the worker stamps a move no earlier than the one
# before it, so a burst of late events gives several moves the same occurred_at. Moves 9 and 10 here share
# one: the lead ends in opportunity (L:10), not in sal (L:9).
RECYCLED_TWICE = [
    ("lead", T0),
    ("nurturing", T0 + DAY_MS),
    ("mql", T0 + 2 * DAY_MS),
    ("nurturing", T0 + 3 * DAY_MS),
    ("mql", T0 + 4 * DAY_MS),
    ("nurturing", T0 + 5 * DAY_MS),
    ("mql", T0 + 6 * DAY_MS),
    ("nurturing", T0 + 7 * DAY_MS),
    ("mql", T0 + 8 * DAY_MS),
    ("sal", T0 + 9 * DAY_MS),
    ("opportunity", T0 + 9 * DAY_MS),
]


def test_current_stage_of_a_lead_with_ten_moves_and_more_is_its_last_move(db: Db) -> None:
    """``transition_id`` is ``lead:seq`` as text, and "L:10" < "L:9": the tie on occurred_at was broken by
    the text, and the lead showed in ``sal``, a stage it had left."""
    db.path("L", RECYCLED_TWICE)
    stages = {r["stage"]: r for r in funnel_report(db.run, Period(T0 - DAY_MS, T0 + 30 * DAY_MS))["stages"]}
    assert stages["opportunity"]["current"] == 1
    assert stages["sal"]["current"] == 0


def test_an_open_deal_with_ten_moves_and_more_is_named_in_the_win_rate_note(db: Db) -> None:
    """The plan's open-deal caveat reads each lead's latest stage the same way: the deal is open."""
    db.path("L", RECYCLED_TWICE)
    rates, note = measured_rates(db.run, Period(T0 - DAY_MS, T0 + 30 * DAY_MS))
    assert rates["opportunity_to_customer"] == 0.0
    assert note is not None and note.startswith("1 of the 1 opportunities opened in the period were still")


def test_stale_content_is_judged_on_the_utc_day_of_until_whatever_the_engine_s_time_zone(
    clickhouse_dsn: str, db: Db
) -> None:
    """The period is UTC everywhere (``--until 2036-01-01T20:00`` is 20:00 UTC); the stale test took the day
    of ``until`` in the engine's time zone, which embedded chDB takes from the machine: on a Tokyo machine
    20:00 UTC is already the next day, and an item updated exactly 365 days before (not stale: ``> 365``)
    was flagged stale there and not in UTC."""
    until = int(dt.datetime(2036, 1, 1, 20, tzinfo=dt.UTC).timestamp() * 1000)
    db.client.insert(
        "leadpulse.content",
        [
            ("K365", "365 days", "blog", "lead", None, dt.date(2034, 1, 1), dt.date(2035, 1, 1)),
            ("K366", "366 days", "blog", "lead", None, dt.date(2034, 1, 1), dt.date(2034, 12, 31)),
        ],
        column_names=list(COLUMNS[:-1]),  # (loaded_at: its default)
    )
    tokyo = clickhouse_connect.get_client(dsn=clickhouse_dsn, settings={"session_timezone": "Asia/Tokyo"})
    try:
        run = client_runner(tokyo)
        assert run("SELECT timezone() AS tz", None).rows == [["Asia/Tokyo"]]
        flagged = health_report(run, Period(until - 30 * DAY_MS, until), 90, 365)["flagged"]
    finally:
        tokyo.close()
    assert {r["content_id"]: r["stale"] for r in flagged} == {"K365": False, "K366": True}


def test_one_follow_up_answers_only_the_latest_mql_before_it(db: Db) -> None:
    """An MQL nobody answered, recycled after a week, turns MQL again on day 20 and is called an hour later.
    That call answers the second MQL only (it stops the worker's second clock; the first was gone): one
    follow-up of 1 h, one MQL never followed. Before, the call answered both: followed_up 2 and a median of
    229 hours, a follow-up time nobody took."""
    db.path(
        "L",
        [("lead", T0), ("mql", T0 + DAY_MS), ("nurturing", T0 + 8 * DAY_MS), ("mql", T0 + 20 * DAY_MS)],
    )
    db.insert(
        "sales_activities",
        [{"event_id": "a1", "lead_id": "L", "event_time": T0 + 20 * DAY_MS + H, "activity": "first_touch"}],
    )
    follow = sla_report(db.run, Period(T0, T0 + 30 * DAY_MS))["follow_up"][0]
    assert (follow["mqls"], follow["followed_up"], follow["within_sla"]) == (2, 1, 1)
    assert (follow["compliance"], follow["p50_hours"], follow["p95_hours"]) == (0.5, 1.0, 1.0)


def test_health_as_of_a_past_until_leaves_out_items_published_after_it(db: Db) -> None:
    """A health report up to the end of June, run in October, listed the items published in September as
    unused content of June and counted them in June's stage coverage. An item published on the last day
    the period covers is in it."""
    until = int(dt.datetime(2035, 7, 1, tzinfo=dt.UTC).timestamp() * 1000)
    db.client.insert(
        "leadpulse.content",
        [
            ("OLD", "old", "blog", "lead", None, dt.date(2035, 1, 10), dt.date(2035, 1, 10)),
            ("JUNE30", "june 30", "blog", "lead", None, dt.date(2035, 6, 30), dt.date(2035, 6, 30)),
            ("SEPT", "september", "blog", "lead", None, dt.date(2035, 9, 1), dt.date(2035, 9, 1)),
        ],
        column_names=list(COLUMNS[:-1]),  # (loaded_at: its default)
    )
    report = health_report(db.run, Period(until - 30 * DAY_MS, until), 90, 365)
    assert [r["content_id"] for r in report["flagged"]] == ["JUNE30", "OLD"]
    assert next(r for r in report["coverage"] if r["funnel_stage"] == "lead")["items"] == 2


@pytest.mark.parametrize("since", ["1000000d", "1000000000000d"])
def test_a_since_far_before_any_data_still_finds_the_data(db: Db, since: str) -> None:
    """``--since 1000000000000d`` ("everything") is beyond Int64 milliseconds: the parameter wrapped round,
    and the content and funnel reports came back empty over a store holding a view and an MQL."""
    db.insert(
        "events",
        [
            {
                "event_id": "e1",
                "event_type": "content_view",
                "event_time": T0 + DAY_MS,
                "lead_id": "L",
                "content_id": "C1",
            }
        ],
    )
    db.path("L", [("lead", T0), ("mql", T0 + 2 * DAY_MS)])
    period = make_period(since, None, T0 + 30 * DAY_MS)
    assert [r["content_id"] for r in content_report(db.run, period)["content"]] == ["C1"]
    stages = {r["stage"]: r["entered"] for r in funnel_report(db.run, period)["stages"]}
    assert (stages["lead"], stages["mql"]) == (1, 1)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["content", "--window-days", "1000000000000"], "--window-days"),
        (["health", "--unused-days", "1000000000000"], "--unused-days"),
        (["health", "--stale-days", "1000000000000"], "--stale-days"),
        (["sla", "--sla-hours", "1e300"], "--sla-hours"),
    ],
)
def test_day_counts_that_overflow_a_query_parameter_are_refused(
    tmp_path: Path, args: list[str], option: str
) -> None:
    """In milliseconds they overflowed the Int64 parameters, and the reports came back silently wrong (no
    lead influenced, every MQL not judged) instead of refusing the value."""
    result = CliRunner().invoke(app, ["report", *args], env={"LEADPULSE_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output


def test_an_empty_lead_id_is_no_lead_in_content_and_plan(db: Db) -> None:
    """A tracker whose ``lp_lid`` cookie was cleared to "" (or a server-side producer) sends
    ``lead_id: ""`` beside the anonymous id; the collector admits it and the worker keys it by the
    anonymous id (``lead_id or anonymous_id``). The reports took "" for a lead: every such visitor was one
    lead "" (unique leads, the baseline) and one person (plan's visitors), and a visitor who identified
    later had their views credited to "" instead of to the lead. Here visitor A (identified as L, MQL two
    days after) and visitor B both read C1 with lead_id "": one lead, influenced; two visitors, one of them
    acquired."""
    view = {"event_type": "content_view", "content_id": "C1", "lead_id": ""}
    db.insert(
        "events",
        [
            {**view, "event_id": "v1", "event_time": T0 + DAY_MS, "anonymous_id": "A"},
            {**view, "event_id": "v2", "event_time": T0 + DAY_MS, "anonymous_id": "B"},
        ],
    )
    db.insert(
        "leads", [{"event_id": "id1", "lead_id": "L", "anonymous_id": "A", "event_time": T0 + 2 * DAY_MS}]
    )
    db.path("L", [("lead", T0 + 2 * DAY_MS), ("mql", T0 + 3 * DAY_MS)])
    period = Period(T0, T0 + 30 * DAY_MS)
    (row,) = content_report(db.run, period)["content"]
    assert (row["views"], row["unique_leads"], row["influenced_leads"]) == (2, 1, 1)
    assert (row["touched_conversion"], row["all_leads_conversion"]) == (1.0, 1.0)
    rates, _ = measured_rates(db.run, period)
    assert rates["visitor_to_lead"] == 0.5


def test_a_report_clickhouse_refuses_is_a_one_line_error_not_a_traceback(clickhouse_dsn: str, db: Db) -> None:
    """`leadpulse sql` turned an engine error into one line; `leadpulse report` let it out as a traceback
    (a store one migration behind the CLI, a server role without a grant, a memory limit). Here the
    catalogue lacks a column the content report reads."""
    db.client.command("ALTER TABLE leadpulse.content RENAME COLUMN url TO url_renamed")
    try:
        result = CliRunner().invoke(
            app, ["report", "content"], env={"LEADPULSE_CLICKHOUSE_DSN": clickhouse_dsn}
        )
    finally:
        db.client.command("ALTER TABLE leadpulse.content RENAME COLUMN url_renamed TO url")
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    (line,) = result.output.strip().splitlines()
    assert line.startswith("leadpulse: error: DatabaseError: Code: 47.") and "url" in line


def test_a_visitor_identified_after_until_is_no_lead_of_the_period(db: Db) -> None:
    """A closed period's content report does not change as time passes (transitions count up to --until).
    The links from anonymous ids to leads did not stop there: a reader of C1 in the period who filled a form
    after it became one of C1's unique leads when the report was run again, a touching lead who could not
    have converted in the period (their moves come after the form), so C1's touched conversion fell from
    1/1 to 1/2 in a re-run. Here L reads and converts in the period, visitor A reads in it and identifies
    after --until."""
    until = T0 + 30 * DAY_MS
    view = {"event_type": "content_view", "content_id": "C1"}
    db.insert(
        "events",
        [
            {**view, "event_id": "v1", "event_time": T0 + DAY_MS, "lead_id": "L"},
            {**view, "event_id": "v2", "event_time": T0 + DAY_MS, "anonymous_id": "A"},
        ],
    )
    db.path("L", [("lead", T0), ("mql", T0 + 2 * DAY_MS)])
    db.insert(
        "leads", [{"event_id": "id1", "lead_id": "M", "anonymous_id": "A", "event_time": until + DAY_MS}]
    )
    db.path("M", [("lead", until + DAY_MS)])
    (row,) = content_report(db.run, Period(T0, until))["content"]
    assert (row["views"], row["unique_leads"], row["touched_conversion"]) == (2, 1, 1.0)


def test_an_empty_owner_is_unassigned_in_every_sla_section(db: Db) -> None:
    """A CRM that sends owner "" for nobody put a second "nobody" row, with a blank owner, beside
    (unassigned) in by_owner and owner_compliance."""
    db.path("L1", [("lead", T0), ("mql", T0 + DAY_MS)])
    db.path("L2", [("lead", T0), ("mql", T0 + DAY_MS)])
    due = T0 + DAY_MS + H
    db.insert(
        "hot_leads",
        [
            {
                "notification_id": f"n{i}",
                "lead_id": lead,
                "became_hot_at": T0 + DAY_MS,
                "sla_due_at": due,
                "owner": owner,
            }
            for i, (lead, owner) in enumerate((("L1", ""), ("L2", None)))
        ],
    )
    db.insert(
        "sla_events",
        [
            {
                "timeout_id": f"t{i}",
                "lead_id": lead,
                "sla": "hot_lead_follow_up",
                "level": "breach",
                "started_at": T0 + DAY_MS,
                "due_at": due,
                "fired_at": due,
                "owner": owner,
            }
            for i, (lead, owner) in enumerate((("L1", ""), ("L2", None)))
        ],
    )
    report = sla_report(db.run, Period(T0, T0 + 30 * DAY_MS))
    assert [(r["owner"], r["breaches"]) for r in report["by_owner"]] == [("(unassigned)", 2)]
    assert [(r["owner"], r["hot_leads"], r["breaches"]) for r in report["owner_compliance"]] == [
        ("(unassigned)", 2, 2)
    ]
