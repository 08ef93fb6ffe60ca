"""DESIGN §7/§8 through the ``leadpulse`` command as an outside test runs it: the ClickHouse contract tables
and the content catalogue's columns after ``leadpulse migrate``, and every ``leadpulse report`` in every
``--format`` DESIGN names. Expected values are written out from DESIGN, not taken from the code.

Embedded ClickHouse in a data directory of this module's own: each command is a subprocess that opens it
(no sink runs), as an analyst's shell does.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess

import pytest

from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e

# DESIGN §7: database `leadpulse`, these tables; `content` holds id, title, type, funnel stage and the
# published/updated dates.
CONTRACT_TABLES = ("events", "lead_scores", "stage_transitions", "sla_events", "hot_leads", "content")
CONTENT_COLUMNS = ("content_id", "title", "content_type", "funnel_stage", "published_date", "updated_date")
# DESIGN §8: `leadpulse report content|health|funnel|sla|plan` (`--format table|csv|json`).
REPORTS = ("content", "health", "funnel", "sla", "plan")
FORMATS = ("table", "csv", "json")
PLAN_ARGS = ("--target", "10M", "--deal-size", "1M")  # plan needs a revenue target and a deal size


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEADPULSE, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    environment = leadpulse_env(data_dir=tmp_path_factory.mktemp("contracts") / "data")
    done = run(environment, "migrate")
    assert done.returncode == 0, done.stdout + done.stderr
    return environment


def test_migrate_creates_the_contract_tables_in_database_leadpulse(env: dict[str, str]) -> None:
    done = run(env, "sql", "--format", "json", "SELECT name FROM system.tables WHERE database = 'leadpulse'")
    assert done.returncode == 0, done.stderr
    tables = {row["name"] for row in json.loads(done.stdout)["result"]}
    assert set(CONTRACT_TABLES) <= tables
    views = [name for name in tables if "content" in name and name.endswith("_mv")]
    assert views, f"no materialized view for daily content usage among {sorted(tables)}"


def test_the_content_catalogue_has_the_design_columns(env: dict[str, str]) -> None:
    done = run(env, "sql", "--format", "csv", "DESCRIBE TABLE leadpulse.content")
    assert done.returncode == 0, done.stderr
    columns = {row["name"] for row in csv.DictReader(io.StringIO(done.stdout))}
    assert set(CONTENT_COLUMNS) <= columns


@pytest.mark.parametrize("report", REPORTS)
def test_every_report_answers_in_every_format(env: dict[str, str], report: str) -> None:
    extra = PLAN_ARGS if report == "plan" else ()
    outputs = {}
    for fmt in FORMATS:
        done = run(env, "report", report, *extra, "--format", fmt)
        assert done.returncode == 0, (fmt, done.stdout, done.stderr)
        assert done.stdout.strip(), fmt
        outputs[fmt] = done.stdout
    body = json.loads(outputs["json"])
    assert isinstance(body, dict) and body, body
    first_csv_line = next(line for line in outputs["csv"].splitlines() if not line.startswith("#"))
    assert "," in first_csv_line  # a header row
