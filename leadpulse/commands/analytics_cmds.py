"""CLI commands: analytics."""

from __future__ import annotations

import typer

from leadpulse.commands.not_built import not_built


def register(app: typer.Typer) -> None:
    @app.command(
        "report",
        help="Content, health, funnel, SLA and plan reports (not built yet: issue #4)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def report_cmd() -> None:
        not_built("report", 4)

    @app.command(
        "sql",
        help="Run a read-only SQL query (not built yet: issue #4)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def sql_cmd() -> None:
        not_built("sql", 4)
