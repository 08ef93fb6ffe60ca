"""CLI commands: broker."""

from __future__ import annotations

import typer

from leadpulse.commands.not_built import not_built


def register(app: typer.Typer) -> None:
    @app.command(
        "broker",
        help="Start the local Tansu broker (not built yet: issue #2)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def broker_cmd() -> None:
        not_built("broker", 2)

    @app.command(
        "topics",
        help="Create topics (not built yet: issue #2)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def topics_cmd() -> None:
        not_built("topics", 2)

    @app.command(
        "produce",
        help="Publish JSONL events (not built yet: issue #2)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def produce_cmd() -> None:
        not_built("produce", 2)

    @app.command(
        "replay",
        help="Re-publish stored history (not built yet: issue #4)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def replay_cmd() -> None:
        not_built("replay", 4)
