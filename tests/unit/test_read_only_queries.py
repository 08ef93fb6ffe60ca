"""``leadpulse sql`` and the sink's query API read the leadpulse tables only: statements that write, and
functions that read files, URLs or other servers (which ClickHouse's readonly setting still allows), are
refused before they reach the engine."""

from __future__ import annotations

import re

import pytest

from sinks.query_service import QueryError, check_read_only

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("SELECT * FROM file('/etc/passwd', 'LineAsString') LIMIT 2", "file()"),
        ("SELECT * FROM URL('http://127.0.0.1:6066/health', 'JSONAsString')", "URL()"),
        ("select * from \"file\"('/etc/hostname', 'LineAsString')", "file()"),
        ("SELECT * FROM `s3` ('https://bucket/x.csv')", "s3()"),
        ("WITH x AS (SELECT * FROM remote('10.0.0.1', system.one)) SELECT * FROM x", "remote()"),
        ("SELECT * FROM icebergS3('https://bucket/table')", "icebergS3()"),
        ("SELECT 'a string' AS s, file('/etc/passwd') AS f", "file()"),
    ],
)
def test_functions_reading_outside_clickhouse_are_refused(sql: str, named: str) -> None:
    with pytest.raises(QueryError, match=rf"^{named.replace('(', '[(]').replace(')', '[)]')} reads files"):
        check_read_only(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT domain(url), path(url), URLHierarchy(url) FROM leadpulse.events WHERE url LIKE '%file(%'",
        "SELECT count() FROM leadpulse.events -- no file('/x') here",
        "SELECT /* remote(a) */ 1",
        "SELECT 'it''s file(' AS s",
        "SELECT url AS file FROM leadpulse.events",
    ],
)
def test_queries_on_the_tables_pass_whatever_their_strings_and_names_say(sql: str) -> None:
    assert check_read_only(sql) == sql


@pytest.mark.parametrize("sql", ["DROP TABLE leadpulse.events", "INSERT INTO t VALUES (1)", ""])
def test_statements_that_are_not_reads_are_refused(sql: str) -> None:
    with pytest.raises(QueryError, match="only read-only statements"):
        check_read_only(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 INTO OUTFILE '/tmp/out.txt'",
        "select 'x' into   outfile '/tmp/victim.txt' TRUNCATE",
        "SELECT * FROM leadpulse.events INTO OUTFILE 'e.csv' FORMAT CSV",
    ],
)
def test_a_select_that_writes_a_file_is_refused(sql: str) -> None:
    with pytest.raises(QueryError, match=r"^INTO OUTFILE writes a file"):
        check_read_only(sql)


def test_into_outfile_inside_a_string_is_only_text() -> None:
    sql = "SELECT count() FROM leadpulse.events WHERE url = 'into outfile'"
    assert check_read_only(sql) == sql


@pytest.mark.parametrize(
    "sql",
    [
        "-- funnel by week\nSELECT count() FROM leadpulse.stage_transitions",
        "/* a note */ WITH 1 AS x SELECT x",
        "SELECT 'a;b' AS s;",
    ],
)
def test_comments_before_a_read_and_semicolons_in_strings_are_allowed(sql: str) -> None:
    assert check_read_only(sql) == sql.strip().rstrip(";")


@pytest.mark.parametrize(
    "sql", ["-- SELECT\nDROP TABLE leadpulse.events", "/* SELECT */ INSERT INTO leadpulse.events VALUES (1)"]
)
def test_a_write_behind_a_comment_is_refused(sql: str) -> None:
    with pytest.raises(QueryError, match="only read-only statements"):
        check_read_only(sql)


@pytest.mark.parametrize("sql", ["SELECT 1 FORMAT JSON", "select count() from leadpulse.events format CSV;"])
def test_a_format_clause_points_to_the_format_option(sql: str) -> None:
    """ClickHouse refused it with "Syntax error ... FORMAT Native", a clause the user never wrote."""
    with pytest.raises(QueryError, match=r"^FORMAT (JSON|CSV): .*use --format"):
        check_read_only(sql)


@pytest.mark.parametrize(
    "sql", ["SELECT formatDateTime(now(), '%F') AS format", "SELECT 'x FORMAT JSON'", "SELECT 1 AS format"]
)
def test_format_as_a_name_or_inside_a_string_is_allowed(sql: str) -> None:
    assert check_read_only(sql) == sql


@pytest.mark.parametrize(
    "sql", ["(SELECT 1)", "( SELECT 1) UNION ALL (SELECT 2)", "((WITH 1 AS a SELECT a))"]
)
def test_a_parenthesised_read_is_a_read(sql: str) -> None:
    """``(SELECT 1)`` was refused as "only read-only statements" (CLI audit): only the first word was read."""
    assert check_read_only(sql) == sql


@pytest.mark.parametrize("sql", ["(DROP TABLE leadpulse.events)", "(INSERT INTO t VALUES (1))"])
def test_parentheses_do_not_hide_a_write(sql: str) -> None:
    with pytest.raises(QueryError, match="only read-only statements"):
        check_read_only(sql)


@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        ("SELECT $$'$$ AS a, file('/etc/hostname') AS b", "file()"),  # a heredoc string holding a quote
        ("SELECT 1 #! '\n, file('/etc/hostname') AS b", "file()"),  # a '#' comment holding a quote
        ("SELECT 1 # '\n, file('/etc/hostname') AS b", "file()"),
        ("SELECT 1 /* /* */ ' */ , file('/etc/hostname') AS b", "file()"),  # nested comments
        ("SELECT 1 AS `a'`, file('/etc/hostname') AS f, 'z' AS `b'`", "file()"),  # a quote in a name
        ("SELECT 1 AS \"a\"\"'\", file('/etc/hostname') AS b, 'x'", "file()"),
        ("SELECT 1 AS `a\\`'`, file('/etc/hostname') AS b, 'x'", "file()"),
        ("SELECT 1 #! '\nINTO OUTFILE '/tmp/x.txt' -- '", "INTO OUTFILE"),
        ("SELECT 1 AS `a'` INTO OUTFILE '/tmp/x.txt' -- '", "INTO OUTFILE"),
    ],
)
def test_quoting_read_as_clickhouse_reads_it_hides_no_call_and_no_outfile(sql: str, refusal: str) -> None:
    """Literals and comments were removed with one regular expression, quoted names with another: a quote
    inside a name, a '#' or nested comment, a $$heredoc$$ started a "literal" that swallowed the call or
    the INTO OUTFILE after it, and the query read /etc/hostname or wrote /tmp/x.txt through a read-only
    query (the write was seen on embedded chDB)."""
    with pytest.raises(QueryError, match=rf"^{re.escape(refusal)}"):
        check_read_only(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT $$file('x') INTO OUTFILE 'y'$$ AS s",
        "SELECT $tag$it's$tag$ AS s, 'file(' AS t",
        "SELECT 1 /* /* file('x') */ INTO OUTFILE 'y' */",
        "SELECT 'a''b' AS s, \"c\"\"d\" AS n",
    ],
)
def test_calls_and_outfiles_inside_strings_names_and_comments_are_only_text(sql: str) -> None:
    assert check_read_only(sql) == sql
