"""CLI commands: worker."""

from __future__ import annotations

import typer

from leadpulse.commands.not_built import not_built


def register(app: typer.Typer) -> None:
    @app.command(
        "worker",
        help="Run the scoring/stage/SLA worker (not built yet: issue #3)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def worker_cmd() -> None:
        not_built("worker", 3)

    @app.command(
        "rescore",
        help="Replay history through new rules (dry run) (not built yet: issue #3)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def rescore_cmd() -> None:
        not_built("rescore", 3)
