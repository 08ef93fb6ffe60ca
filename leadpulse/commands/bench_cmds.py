"""CLI commands: bench."""

from __future__ import annotations

import typer

from leadpulse.commands.not_built import not_built


def register(app: typer.Typer) -> None:
    @app.command(
        "bench",
        help="Run benchmarks (not built yet: issue #3)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def bench_cmd() -> None:
        not_built("bench", 3)
