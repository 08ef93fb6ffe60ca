"""What ``leadpulse sql`` and the sink's query API let through: one read-only statement that reads the
leadpulse tables only (``sinks.query_service`` runs it, with ``readonly=2`` besides).

ClickHouse's ``readonly`` still allows functions that read files, URLs or other servers and a SELECT that
writes a file (``INTO OUTFILE``), so those are refused here. The checks look at the statement's code: its
string literals and comments removed, quoted names unquoted. That removal must read quotes and comments as
ClickHouse does, in one pass from the left: done with regular expressions one kind after the other, a
quote inside a name (`` `a'` ``), a ``#`` comment, a nested ``/* /* */ */`` comment or a ``$$'$$`` string
was taken for the start of a literal that swallowed the ``file(...)`` or ``INTO OUTFILE`` after it, and
the query read or wrote the file (stop 27). ``sinks.query_service`` also asks ClickHouse's own parser.
"""

from __future__ import annotations

import re

READ_VERBS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")


class QueryError(Exception):
    """A query was refused or failed; the message says why and, for connection problems, what to do."""


# Table functions (and the scalar file()) that read files, URLs or other servers. ClickHouse's readonly
# setting still allows them, so `leadpulse sql` and the sink's query API, which are meant to read the
# leadpulse tables only, refuse them by name.
OUTSIDE_READERS = frozenset(
    name.lower()
    for name in [
        *("file", "fileCluster", "url", "urlCluster", "s3", "s3Cluster", "gcs", "oss", "cosn"),
        *("azureBlobStorage", "azureBlobStorageCluster", "hdfs", "hdfsCluster", "hive"),
        *("remote", "remoteSecure", "cluster", "clusterAllReplicas"),
        *("mysql", "postgresql", "odbc", "jdbc", "sqlite", "mongodb", "redis", "executable", "input"),
    ]
)
OUTSIDE_READER_FAMILIES = ("deltalake", "hudi", "iceberg", "paimon", "ytsaurus", "arrowflight")
_HEREDOC = re.compile(r"\$(\w*)\$")
_INTO_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.I)
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+([A-Za-z]\w*)\s*$", re.I)  # the last clause of a statement
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def _quoted_end(sql: str, start: int, quote: str) -> int:
    """Index after the quoted token opening at ``start``: backslash escapes, a doubled quote is one quote.
    Unterminated: the end (ClickHouse refuses the statement)."""
    i = start + 1
    while i < len(sql):
        if sql[i] == "\\":
            i += 2
        elif sql[i] == quote:
            if sql[i + 1 : i + 2] != quote:
                return i + 1
            i += 2
        else:
            i += 1
    return len(sql)


def _comment_end(sql: str, start: int) -> int:
    """Index after the ``/* */`` comment opening at ``start``; they nest in ClickHouse."""
    depth, i = 0, start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(sql)


def code_of(sql: str) -> str:
    """``sql`` without string literals and comments, quoted names unquoted: what the checks look at."""
    out: list[str] = []
    i = 0
    while i < len(sql):
        c = sql[i]
        heredoc = _HEREDOC.match(sql, i) if c == "$" else None
        if c == "'":
            i = _quoted_end(sql, i, c)
            out.append(" ")
        elif c in '"`':
            end = _quoted_end(sql, i, c)
            out.append(sql[i + 1 : end - 1])
            i = end
        elif heredoc is not None:
            close = sql.find(heredoc.group(0), heredoc.end())
            i = len(sql) if close < 0 else close + len(heredoc.group(0))
            out.append(" ")
        elif sql.startswith("--", i) or c == "#":
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end
            out.append(" ")
        elif sql.startswith("/*", i):
            i = _comment_end(sql, i)
            out.append(" ")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def reads_outside(name: str) -> bool:
    """Whether a function of this name reads files, URLs or other servers."""
    return name.lower() in OUTSIDE_READERS or name.lower().startswith(OUTSIDE_READER_FAMILIES)


def outside_reader(code: str) -> str | None:
    """The first function in ``code`` (see ``code_of``) that reads outside ClickHouse's own tables, if any."""
    return next((m.group(1) for m in _CALL.finditer(code) if reads_outside(m.group(1))), None)


def refuse_outside_reader(name: str) -> QueryError:
    return QueryError(
        f"{name}() reads files, URLs or other servers; queries here may read the leadpulse tables only"
    )


def check_read_only(sql: str) -> str:
    """The query to run, or QueryError. The checks read the code without literals and comments, so a query
    may start with a ``-- comment`` line and a string may hold a ';'."""
    stripped = sql.strip().rstrip(";").strip()
    code = code_of(sql).strip().rstrip(";").strip()
    words = code.lstrip("( \t\r\n").split(None, 1)  # "(SELECT 1) UNION ALL (SELECT 2)" is a read too
    if not words or words[0].upper() not in READ_VERBS:
        raise QueryError(
            f"only read-only statements are allowed ({', '.join(READ_VERBS)}); got {stripped[:40]!r}"
        )
    if ";" in code:
        raise QueryError("one statement per query: remove the ';' separated second statement")
    if _INTO_OUTFILE.search(code):  # a SELECT that writes a file
        raise QueryError("INTO OUTFILE writes a file; use --format csv or json and redirect the output")
    format_clause = _FORMAT_CLAUSE.search(code)
    if format_clause:  # the client asks for its own format: ClickHouse answered with a syntax error
        raise QueryError(
            f"FORMAT {format_clause.group(1)}: results come back as table, csv or json; "
            "remove the FORMAT clause and use --format"
        )
    reader = outside_reader(code)
    if reader is not None:
        raise refuse_outside_reader(reader)
    return stripped
