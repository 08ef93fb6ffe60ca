"""``--help`` shows boolean flags as plain flags: ``--dry-run``, not ``--dry-run <bool>``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from leadpulse.cli import app

pytestmark = pytest.mark.unit


def command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():  # groups: every subcommand
        yield from command_paths(sub, (*path, name))


ALL = sorted(command_paths(typer.main.get_command(app)))


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "leadpulse")
def test_no_command_shows_a_value_type_for_a_flag(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output


def test_flags_render_plain_and_valued_options_keep_their_type() -> None:
    out = CliRunner().invoke(app, ["rescore", "--help"], terminal_width=120).output
    dry_run = next(line for line in out.splitlines() if "--dry-run" in line)
    assert "<" not in dry_run.split("Required")[0], dry_run
    rules = next(line for line in out.splitlines() if "--rules" in line)
    assert "<file>" in rules  # only flags lose the type column
    assert any("--live" in line and "--no-live" in line for line in demo_help().splitlines())


def demo_help() -> str:
    return CliRunner().invoke(app, ["demo", "--help"], terminal_width=120).output


def test_sql_help_says_how_to_read_the_query_from_standard_input() -> None:
    out = " ".join(CliRunner().invoke(app, ["sql", "--help"], terminal_width=200).output.split())
    assert "`leadpulse sql -` reads it from standard input" in out


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_dlq_list_refuses_a_limit_below_one(limit: str) -> None:
    """``--limit 0`` and ``--limit -3`` listed every dead letter (CLI audit): a usage error, before I/O."""
    result = CliRunner().invoke(app, ["dlq", "list", "--limit", limit], terminal_width=120)
    assert result.exit_code == 2, result.output
    assert "--limit" in result.output and "greater than or equal to 1" in result.output
