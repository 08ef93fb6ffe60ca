"""CLI commands: the demo."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from leadpulse.commands.cli_output import fail, stdout_console
from leadpulse.commands.settings_arg import cli_settings

if TYPE_CHECKING:
    from sinks.reports.period import Period


def register(app: typer.Typer) -> None:
    @app.command(
        "demo",
        help="Run the whole pipeline locally (broker, worker, sink on embedded ClickHouse, "
        "collector, notifier) on synthetic B2B traffic, with a live view; ends with the reports and "
        "an offline HTML report. Data stays under LEADPULSE_DATA_DIR (default .leadpulse in the current "
        "directory) for `leadpulse report`/`sql`; the broker's topics end with the demo.",
    )
    def demo_cmd(
        duration: float = typer.Option(
            None, "--duration", min=1, help="Seconds of traffic (default: the whole plan of --leads)."
        ),
        rate: float = typer.Option(500.0, "--rate", min=1, help="Events per second to publish."),
        leads: int = typer.Option(
            None, "--leads", min=10, help="Leads to simulate (default: sized to rate x duration, or 1000)."
        ),
        seed: int = typer.Option(
            None,
            "--seed",
            help="Traffic seed: the same seed gives the same traffic (default 7, or the next seed the data "
            "directory has no traffic of).",
        ),
        reset: bool = typer.Option(False, "--reset", help="Delete the data directory first."),
        live: bool = typer.Option(None, "--live/--no-live", help="Live view (default: when on a terminal)."),
        via: str = typer.Option(
            "sdk",
            "--via",
            metavar="[sdk|collector]",
            help="Publish through the Python SDK (sdk) or the HTTP collector (collector).",
        ),
    ) -> None:
        from agents.sla import FOLLOW_UP, REJECTION_FEEDBACK
        from leadpulse.demo import run_demo
        from leadpulse.demo_services import DemoError, DemoUsageError
        from leadpulse.live_view import next_steps, terminal_report
        from sinks.reports.render import render
        from sinks.reports.sla import compliance_line

        if via not in ("sdk", "collector"):
            raise typer.BadParameter("must be sdk or collector", param_hint="--via")
        settings = cli_settings()
        console = stdout_console()
        try:
            result = run_demo(
                settings,
                duration_s=duration,
                rate=rate,
                leads=leads,
                seed=seed,
                reset=reset,
                live=console.is_terminal if live is None else live,
                console=console,
                via=via,
            )
        except DemoError as exc:
            raise fail(f"demo: {exc}", 2 if isinstance(exc, DemoUsageError) else 1) from None
        console.print(period_line(result.period), markup=False, highlight=False)
        for name in ("content", "funnel", "sla"):
            console.rule(f"leadpulse report {name}")
            shown, note = terminal_report(name, result.reports[name])
            console.print(render(shown, "table"), markup=False, highlight=False)
            if note:
                console.print(note, markup=False, highlight=False)
        path = _write_html(result.report_path, result.reports, result, period_line(result.period))
        console.rule("summary")
        by_sla = result.breaches_by_sla
        console.print(
            f"published {result.published:,} events · {result.hot_leads} hot leads notified "
            f"({result.webhooks_delivered} signed webhooks delivered) · {result.sla_breaches} SLA "
            f"breaches: {by_sla[FOLLOW_UP]} hot-lead follow-ups (the traffic made "
            f"{len(result.expected_sla_misses)} leads miss it) and {by_sla[REJECTION_FEEDBACK]} "
            "rejections without feedback"
        )
        console.print(compliance_line(result.reports["sla"]["follow_up"][0]), markup=False, highlight=False)
        console.print(f"HTML report: {path}" if path else "HTML report: not written (renderer unavailable)")
        dsn = settings.shown_dsn if settings.clickhouse_dsn else None  # the data is there, not in data_dir
        hint = next_steps(settings.data_dir, Path.cwd(), sys.argv[0], shutil.which("leadpulse"), dsn)
        console.print(hint, markup=False, highlight=False)


def period_line(period: Period) -> str:
    """What the demo's reports cover, and that it is what ``leadpulse report`` reads by default: the
    command the demo suggests next prints the same numbers."""
    from sinks.reports.period import DAY_MS

    def utc(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")

    days = round((period.until_ms - period.since_ms) / DAY_MS)
    return (
        f"reports of the last {days} days ({utc(period.since_ms)} to {utc(period.until_ms)} UTC), "
        "as `leadpulse report` reads them without --since"
    )


def _write_html(
    path: Path, reports: dict[str, Any], result: object, subtitle: str | None = None
) -> Path | None:
    try:
        from sinks.reports.html import write_html_report
    except ImportError:
        return None
    from sinks.reports.sla import compliance_headline

    summary: dict[str, Any] = {
        k: getattr(result, k) for k in ("published", "hot_leads", "webhooks_delivered", "sla_breaches")
    }
    summary |= compliance_headline(reports["sla"]["follow_up"][0])
    return write_html_report(
        path,
        reports,
        title="leadpulse demo report",
        subtitle=subtitle,
        generated_at_ms=int(time.time() * 1000),
        summary=summary,
    )
