"""CLI commands: privacy."""

from __future__ import annotations

import typer

from leadpulse.commands.not_built import not_built


def register(app: typer.Typer) -> None:
    @app.command(
        "forget",
        help="Erase a lead everywhere (not built yet: issue #8)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def forget_cmd() -> None:
        not_built("forget", 8)
