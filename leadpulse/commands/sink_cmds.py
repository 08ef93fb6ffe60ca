"""CLI commands: sink."""

from __future__ import annotations

import typer

from leadpulse.commands.not_built import not_built


def register(app: typer.Typer) -> None:
    @app.command(
        "migrate",
        help="Apply ClickHouse migrations (not built yet: issue #4)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def migrate_cmd() -> None:
        not_built("migrate", 4)

    @app.command(
        "sink",
        help="Run the ClickHouse sink (not built yet: issue #4)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def sink_cmd() -> None:
        not_built("sink", 4)

    @app.command(
        "content",
        help="Load the content catalogue (not built yet: issue #4)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def content_cmd() -> None:
        not_built("content", 4)
