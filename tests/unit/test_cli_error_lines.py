"""Every command reports an error as one line, ``leadpulse: error: <what>``, on stderr, with exit 2 for what
the user must fix and 1 for what failed around it. Commands used to say ``error:``, ``leadpulse generate:``
or a rich ``error:`` wrapped to the terminal (CLI audit, stop 20); an option's bad value named the
``LEADPULSE_*`` variable the user never set."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadpulse.cli import app

pytestmark = pytest.mark.unit


def run(args: list[str], tmp_path: Path, **env: str) -> tuple[int, list[str]]:
    """``{empty}`` in an argument is an existing empty file (click checks that files exist first)."""
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    args = [arg.replace("{empty}", str(empty)) for arg in args]
    base = {"LEADPULSE_DATA_DIR": str(tmp_path / "data")}
    result = CliRunner().invoke(app, args, env={**base, **env})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["sql", "SELECT 1", "--format", "yaml"], 2, "--format must be one of table, csv, json, got 'yaml'"),
        (["report", "funnel", "--since", "yesterday-ish"], 2, "yesterday-ish"),
        (["forget", " ", "--yes"], 2, "LEAD_ID must not be empty"),
        (["rescore", "{empty}", "--rules", "{empty}"], 2, "only --dry-run is supported"),
        (["dlq", "list", "--since", "soon"], 2, "soon"),
        (["produce", "{empty}", "--topic", "no.such.topic"], 2, "unknown topic or schema 'no.such.topic'"),
        # every line was refused with "no schema named ''" (the worker's own topics hold no schema's records)
        (
            ["produce", "{empty}", "--topic", "leadpulse.internal.lead_state"],
            2,
            "'leadpulse.internal.lead_state' is the worker's own topic, not for producers; topics: ",
        ),
        (["migrate", "--dsn", "bogus://x"], 2, "invalid settings: --dsn: "),
        (["broker", "--port", "0"], 2, "invalid settings: --port: "),
        (["worker", "--web-port", "70000"], 2, "invalid settings: --web-port: "),
    ],
)
def test_an_error_is_one_line_with_the_common_prefix(
    args: list[str], code: int, message: str, tmp_path: Path
) -> None:
    exit_code, lines = run(args, tmp_path)
    assert exit_code == code, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("leadpulse: error: "), lines
    assert message in lines[0], lines


def test_a_variable_is_still_named_when_the_bad_value_came_from_the_environment(tmp_path: Path) -> None:
    exit_code, lines = run(["migrate"], tmp_path, LEADPULSE_CLICKHOUSE_DSN="bogus://y")
    assert exit_code == 2
    assert lines == [
        "leadpulse: error: invalid settings: LEADPULSE_CLICKHOUSE_DSN: Value error, expected a chdb://, "
        "http:// or https:// DSN, got scheme 'bogus'"
    ]


def test_an_unreachable_clickhouse_server_is_one_line_without_the_drivers_warning(tmp_path: Path) -> None:
    """clickhouse-connect logged "Unexpected Http Driver Exception" before the error (seen from a shell; the
    logger's last-resort handler writes to stderr)."""
    import logging
    import socket

    from leadpulse.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    exit_code, lines = run(["migrate", "--dsn", f"http://127.0.0.1:{port}"], tmp_path)
    assert exit_code == 1
    assert len(lines) == 1 and lines[0].startswith(
        f"leadpulse: error: cannot open ClickHouse at http://127.0.0.1:{port}"
    )
    # and main() quiets the driver's warnings for every command
    logging.getLogger("clickhouse_connect").setLevel(logging.NOTSET)
    with pytest.raises(SystemExit):
        import sys

        argv, sys.argv = sys.argv, ["leadpulse", "--help"]
        try:
            main()
        finally:
            sys.argv = argv
    assert logging.getLogger("clickhouse_connect").level == logging.ERROR
