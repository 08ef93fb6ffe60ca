"""CLI commands: demo."""

from __future__ import annotations

import typer

from leadpulse.commands.not_built import not_built


def register(app: typer.Typer) -> None:
    @app.command(
        "demo",
        help="Run the whole pipeline with synthetic traffic (not built yet: issue #7)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def demo_cmd() -> None:
        not_built("demo", 7)

    @app.command(
        "generate",
        help="Generate synthetic B2B traffic (not built yet: issue #7)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def generate_cmd() -> None:
        not_built("generate", 7)
