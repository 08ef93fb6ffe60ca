"""DESIGN §2/§4/§6/§7/§10 in the ClickHouse columns, read from ``system.columns`` after ``leadpulse migrate``
through ``leadpulse sql``, as an analyst's shell sees them.

Why: the tables DESIGN §7 names were pinned (``test_design_contracts_cli.py``), and so were the content
catalogue's columns, but not what the other tables hold. An analyst queries ``stage_transitions`` by the
fields of DESIGN §2's ``stage_transition``, ``sla_events`` by DESIGN §4's ``sla_timeout`` and ``events`` by
DESIGN §6's fields; a column renamed or dropped on both sides of the sink (migration and row builder) passed
every test. Expected names are written out from DESIGN, not taken from the code.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict

import pytest

from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e

# DESIGN §6: the fields every behavioural event carries, then each event's own.
EVENT_COMMON = ("event_id", "event_time", "anonymous_id", "lead_id", "source")
EVENT_OWN = (
    *("url", "page_category", "referrer", "utm_source", "utm_medium", "utm_campaign", "utm_term"),
    *("utm_content", "campaign_id", "email_id", "link_url", "content_id", "asset_type", "content_type"),
    *("dwell_ms", "percent_viewed", "channel"),
)
# DESIGN §2: `{lead_id, from_stage, to_stage, reason, trigger_event_id, score, occurred_at}`.
TRANSITION = ("lead_id", "from_stage", "to_stage", "reason", "trigger_event_id", "score", "occurred_at")
# DESIGN §4: `{lead_id, sla, level, started_at, due_at, owner}`.
SLA_TIMEOUT = ("lead_id", "sla", "level", "started_at", "due_at", "owner")
# DESIGN §6 timestamp-millis fields, and §2/§4 times: milliseconds, so DateTime64(3) in UTC, never DateTime.
MILLIS = "DateTime64(3, 'UTC')"
# DESIGN §10: emails only as a keyed hash. `email_id` is the id of a campaign's email message (§6).
EMAIL_COLUMNS = {"email_hash", "email_id"}

Columns = dict[str, dict[str, str]]


def bare(column_type: str) -> str:
    """The type without ``LowCardinality(...)``: an encoding, not a different type to a reader."""
    if column_type.startswith("LowCardinality(") and column_type.endswith(")"):
        return column_type[len("LowCardinality(") : -1]
    return column_type


@pytest.fixture(scope="module")
def columns(tmp_path_factory: pytest.TempPathFactory) -> Columns:
    """table -> column -> type of database ``leadpulse`` after ``leadpulse migrate`` in a fresh data dir."""
    env = leadpulse_env(data_dir=tmp_path_factory.mktemp("contract-columns") / "data")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LEADPULSE, *args], env=env, capture_output=True, text=True, timeout=180, check=False
        )

    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    done = run(
        "sql",
        "--format",
        "json",
        "SELECT table, name, type FROM system.columns WHERE database = 'leadpulse'",
    )
    assert done.returncode == 0, done.stderr
    found: Columns = defaultdict(dict)
    for row in json.loads(done.stdout)["result"]:
        found[row["table"]][row["name"]] = row["type"]
    return found


def test_events_hold_every_behavioural_field_with_its_nullability(columns: Columns) -> None:
    events = columns["events"]
    assert set(EVENT_COMMON + EVENT_OWN) <= set(events), sorted(set(EVENT_COMMON + EVENT_OWN) - set(events))
    assert bare(events["event_id"]) == "String"  # unique and required: never NULL
    assert events["event_time"] == MILLIS
    for nullable in ("anonymous_id", "lead_id"):  # one of the two is required, either may be missing
        assert events[nullable] == "Nullable(String)", nullable
    assert "Int" in events["dwell_ms"] and "Float" in events["percent_viewed"]  # ms as an integer; a share


def test_stage_transitions_hold_the_stage_transition_fields(columns: Columns) -> None:
    table = columns["stage_transitions"]
    assert set(TRANSITION) <= set(table), sorted(set(TRANSITION) - set(table))
    for name in ("lead_id", "from_stage", "to_stage", "reason", "trigger_event_id"):
        assert bare(table[name]) == "String", (name, table[name])
    assert table["score"].startswith("Float"), table["score"]
    assert table["occurred_at"] == MILLIS


def test_sla_events_hold_the_sla_timeout_fields(columns: Columns) -> None:
    table = columns["sla_events"]
    assert set(SLA_TIMEOUT) <= set(table), sorted(set(SLA_TIMEOUT) - set(table))
    for name in ("lead_id", "sla", "level"):
        assert bare(table[name]) == "String", (name, table[name])
    for name in ("started_at", "due_at"):
        assert table[name] == MILLIS, (name, table[name])
    assert table["owner"] == "Nullable(String)"  # a lead may have no owner yet


def test_every_time_column_keeps_milliseconds_in_utc(columns: Columns) -> None:
    """DESIGN §6: times are timestamp-millis. A ``DateTime`` column would drop the milliseconds (and one
    without a zone would show server-local time); ``Date`` columns are days by design (daily views, the
    content catalogue's published/updated dates)."""
    wrong = [
        f"{table}.{name}: {column_type}"
        for table, cols in columns.items()
        for name, column_type in cols.items()
        if "DateTime" in column_type and MILLIS not in column_type
    ]
    assert wrong == []


def test_no_column_stores_a_plain_email(columns: Columns) -> None:
    """DESIGN §10: emails are stored only as a keyed hash in analytics (``lead_identified.email`` and
    ``hot_lead.email`` become ``email_hash``)."""
    names = {f"{t}.{n}" for t, cols in columns.items() for n in cols if "mail" in n}
    emails = {name for name in names if name.split(".")[1] not in EMAIL_COLUMNS}
    assert emails == set()
    assert {"leads", "hot_leads"} <= {t for t, cols in columns.items() if "email_hash" in cols}
