"""The demo's reports cover the period the commands it suggests next read.

The demo built its reports over the last 30 days, while ``leadpulse report`` reads the last 90 when given no
--since: once the data directory held an earlier demo's traffic older than 30 days, the command the demo's
closing lines suggest (``leadpulse report funnel``) printed other numbers than the demo had. Each suggested
command is parsed here by the CLI itself, so a changed default on either side is caught.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer

from leadpulse.cli import app
from leadpulse.commands.demo_cmds import period_line
from leadpulse.demo import report_period
from leadpulse.live_view import next_steps, terminal_report
from sinks.reports.period import DAY_MS, make_period

pytestmark = pytest.mark.unit

NOW = 1_795_000_000_000  # 2026-11-18


def _typed_period(words: list[str]) -> tuple[int, int]:
    """The period ``leadpulse report WORDS`` reads, its options parsed by the real command."""
    report = typer.main.get_command(app).commands["report"]  # type: ignore[attr-defined]
    name, *args = words
    params = report.commands[name].make_context(name, args).params
    period = make_period(params["since"], params["until"], NOW)
    return period.since_ms, period.until_ms


def _suggested(tmp_path: Path) -> list[list[str]]:
    """The report commands the demo's closing lines and its notes under the tables tell the user to type."""
    lines = next_steps(tmp_path / "data", tmp_path, "leadpulse", None).splitlines()
    commands = []
    for line in lines:
        if " report " not in line:
            continue
        command, _, comment = line.partition("#")
        words = shlex.split(command)
        commands.append(words[words.index("report") + 1 :])
        if "plan " in comment:  # "also content, health, sla; plan --target 10M --deal-size 1M"
            commands.append(shlex.split(comment[comment.index("plan ") :]))
    rows = [{"content_id": str(n), "views": n} for n in range(30)]
    _, note = terminal_report("content", {"content": rows})
    assert note is not None and "`leadpulse report content`" in note
    commands.append(["content"])
    return commands


def test_each_suggested_report_command_reads_the_period_the_demo_printed(tmp_path: Path) -> None:
    demo = report_period(NOW)
    commands = _suggested(tmp_path)
    assert ["funnel"] in commands and ["plan", "--target", "10M", "--deal-size", "1M"] in commands
    for words in commands:
        assert _typed_period(words) == (demo.since_ms, demo.until_ms), words


def test_the_demo_says_which_period_its_reports_cover() -> None:
    line = period_line(report_period(NOW))
    days = (NOW - report_period(NOW).since_ms) // DAY_MS
    assert line.startswith(f"reports of the last {days} days ("), line
    assert "UTC), as `leadpulse report` reads them without --since" in line
