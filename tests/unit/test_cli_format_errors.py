"""A bad ``--format`` is refused before any query runs, with the flag and the choices named."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from leadpulse.cli import app

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("args", [["sql", "SELECT 1"], ["report", "funnel"], ["report", "content"]])
def test_bad_format_is_a_usage_error_naming_the_flag(args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--format", "yaml"])
    assert result.exit_code == 2
    assert "error: --format must be one of table, csv, json, got 'yaml'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
