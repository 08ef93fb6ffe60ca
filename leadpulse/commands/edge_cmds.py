"""CLI commands: edge."""

from __future__ import annotations

import typer

from leadpulse.commands.not_built import not_built


def register(app: typer.Typer) -> None:
    @app.command(
        "collector",
        help="Run the HTTP collector (not built yet: issue #5)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def collector_cmd() -> None:
        not_built("collector", 5)

    @app.command(
        "dlq",
        help="Inspect and replay dead letters (not built yet: issue #5)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def dlq_cmd() -> None:
        not_built("dlq", 5)

    @app.command(
        "notifier",
        help="Deliver hot-lead webhooks (not built yet: issue #5)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def notifier_cmd() -> None:
        not_built("notifier", 5)
