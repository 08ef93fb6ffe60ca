"""CLI commands: the scoring/stage/SLA worker."""

from __future__ import annotations

import typer

from leadpulse.commands.cli_output import fail
from leadpulse.commands.settings_arg import cli_settings


def register(app: typer.Typer) -> None:
    @app.command(
        "worker",
        help="Run the scoring / funnel-stage / SLA worker (a batch loop over the input topics; "
        "docs/scoring.md). Starts the embedded broker first when LEADPULSE_KAFKA_BOOTSTRAP is unset "
        "and none is running.",
    )
    def worker_cmd(
        port: int = typer.Option(
            None, "--web-port", help="Port of /metrics /health /ready (default LEADPULSE_WEB_PORT, 6066)."
        ),
    ) -> None:
        from agents.rules import RulesError, load_rules
        from agents.worker_process import run_worker
        from streams.broker import running_broker

        settings = cli_settings(web_port=port, flags={"web_port": "--web-port"})
        try:
            rules = load_rules(settings.rules)
        except RulesError as exc:
            raise fail(str(exc), 2) from None
        with running_broker(settings):
            run_worker(settings, rules, loglevel=settings.log_level.lower())
