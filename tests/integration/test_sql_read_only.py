"""``leadpulse sql`` and the sink's query API (both ``client_runner``) refuse functions that read files,
URLs or other servers however the query quotes around them: ClickHouse's own parser decides what is a
call, not the regular expressions of ``check_read_only`` alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest

from sinks.migrate import migrate
from sinks.query_service import QueryError, Runner, client_runner

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(clickhouse_dsn: str) -> Iterator[Runner]:
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    migrate(client)
    yield client_runner(client)
    client.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT $$'$$ AS a, file('/etc/hostname') AS b",  # a heredoc string holding a quote
        "SELECT $tag$'$tag$ AS a, * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT 1 #! '\n, file('/etc/hostname') AS b",  # a '#' comment holding a quote
        "SELECT 1 /* /* */ ' */ , file('/etc/hostname') AS b",  # nested comments
        "SELECT 1 AS `a'`, file('/etc/hostname') AS f, 'z' AS `b'`",  # quoted names holding a quote
        "SELECT 1 AS \"a\"\"'\", file('/etc/hostname') AS b, 'x'",
    ],
)
def test_a_call_hidden_behind_quoting_the_checks_misread_is_refused(run: Runner, sql: str) -> None:
    """Each of these printed the machine's host name before (the file's contents, through a read-only
    query)."""
    with pytest.raises(QueryError, match=r"^file\(\) reads files"):
        run(sql, None)


@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        ("SELECT $$file('x')$$ AS s", [["file('x')"]]),
        ("SELECT 1 AS file", [[1]]),
        ("SELECT count() AS n FROM leadpulse.events WHERE url = {u:String}", [[0]]),
    ],
)
def test_reads_that_only_name_such_a_function_still_run(run: Runner, sql: str, rows: list[list[int]]) -> None:
    assert run(sql, {"u": "file('/etc/hostname')"} if "{u:" in sql else None).rows == rows


def test_a_statement_that_does_not_parse_gets_clickhouse_s_own_error(run: Runner) -> None:
    with pytest.raises(Exception, match=r"SYNTAX_ERROR|Syntax error"):
        run("SELECT FROM WHERE", None)


def test_an_outfile_behind_a_comment_writes_nothing(run: Runner, tmp_path: Path) -> None:
    """Embedded chDB writes INTO OUTFILE even with readonly=2; a '#' comment holding a quote hid the clause
    from the check and the file was written by a "read-only" query."""
    target = tmp_path / "written.txt"
    with pytest.raises(QueryError, match=r"^INTO OUTFILE writes a file"):
        run(f"SELECT 1 #! '\nINTO OUTFILE '{target}' -- '", None)
    assert not target.exists()
