"""``leadpulse sql`` and ``report`` as an analyst types them: a query may start with a ``-- comment``
line, or come from a file on standard input (``leadpulse sql - < query.sql``); no tables yet is one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e

QUERY = "-- how many funnel stages does the path have?\nSELECT length(['a', 'b;c']) AS n, 'x -- y' AS s\n"


def _sql(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = leadpulse_env(data_dir=tmp_path / "d")
    return subprocess.run(
        [*LEADPULSE, "sql", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_query_starting_with_a_comment_line_runs(tmp_path: Path) -> None:
    done = _sql(tmp_path, "--format", "json", QUERY)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == [{"n": 2, "s": "x -- y"}]


def test_a_query_from_standard_input_runs(tmp_path: Path) -> None:
    done = _sql(tmp_path, "-", "--format", "json", stdin=QUERY)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == [{"n": 2, "s": "x -- y"}]


def test_a_write_hidden_behind_a_comment_is_still_refused(tmp_path: Path) -> None:
    done = _sql(tmp_path, "/* looks harmless */ DROP TABLE leadpulse.events")
    assert done.returncode == 2
    assert "only read-only statements are allowed" in done.stderr


def test_a_report_on_a_fresh_data_directory_says_how_to_get_tables_not_a_traceback(tmp_path: Path) -> None:
    env = leadpulse_env(data_dir=tmp_path / "fresh")
    done = subprocess.run(
        [*LEADPULSE, "report", "funnel"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "UNKNOWN_DATABASE" in done.stderr and "leadpulse migrate" in done.stderr


def test_sql_tables_print_numbers_plainly_for_copying_into_other_tools(tmp_path: Path) -> None:
    """``12,345`` pasted into a spreadsheet or a shell is text; the reports keep their separators."""
    done = _sql(tmp_path, "SELECT 12345 AS n, 1234567.25 AS x, 0.123456789 AS f")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2].split() == ["12345", "1234567.25", "0.123456789"]


def test_a_misspelt_table_gets_the_table_names_not_run_migrate(tmp_path: Path) -> None:
    migrated = subprocess.run(
        [*LEADPULSE, "migrate"],
        env=leadpulse_env(data_dir=tmp_path / "d"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    done = _sql(tmp_path, "SELECT count() FROM leadpulse.event")
    assert done.returncode == 2
    assert "UNKNOWN_TABLE" in done.stderr and "leadpulse migrate" not in done.stderr
    assert "the leadpulse tables are: " in done.stderr and "events, " in done.stderr


def test_an_empty_answer_as_csv_still_has_its_header(tmp_path: Path) -> None:
    """A CSV reader given no header has no columns at all (pandas raises EmptyDataError)."""
    done = _sql(
        tmp_path, "--format", "csv", "SELECT number AS n, toString(number) AS s FROM numbers(3) WHERE n > 5"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == ["n,s"]


def test_a_query_clickhouse_refuses_exits_2_as_through_a_sink_and_says_it_once(tmp_path: Path) -> None:
    """Embedded, a query ClickHouse refused exited 1 and printed "Code: 47. DB::Exception: Code: 47. ..."; the
    same query through a running sink's API exited 2 (CLI audit). A usage error is 2 either way."""
    done = _sql(tmp_path, "SELECT nosuchcolumn")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("Code: 47") == 1 and "UNKNOWN_IDENTIFIER" in done.stderr
    assert "Traceback" not in done.stderr


def test_csv_output_ends_with_one_line_break(tmp_path: Path) -> None:
    """``--format csv`` ended with a blank line: a second CSV file appended to it left an empty row."""
    done = _sql(tmp_path, "--format", "csv", "SELECT 1 AS a, 'x' AS b")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "a,b\n1,x\n"


def test_report_section_prints_one_plain_csv_table_and_names_the_sections_when_unknown(
    tmp_path: Path,
) -> None:
    """A report of several sections writes ``# name`` lines between its CSV tables, which pandas, a
    spreadsheet or ``COPY`` cannot read; ``--section`` prints one table alone."""
    env = leadpulse_env(data_dir=tmp_path / "d")

    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LEADPULSE, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    assert report("migrate").returncode == 0
    whole = report("report", "funnel", "--format", "csv")
    assert whole.returncode == 0, whole.stderr
    names = [line[2:] for line in whole.stdout.splitlines() if line.startswith("# ")]
    assert "stages" in names and len(names) > 1, whole.stdout
    one = report("report", "funnel", "--format", "csv", "--section", "stages")
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert lines[0].startswith("stage,entered,current") and not any(line.startswith("#") for line in lines)
    unknown = report("report", "funnel", "--section", "stage")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        f"leadpulse: error: --section: this report has no section 'stage'; it has {', '.join(names)}"
    )
