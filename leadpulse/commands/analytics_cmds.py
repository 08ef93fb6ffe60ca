"""CLI commands for analysts: ``report content|health|funnel|sla|plan`` and ``sql`` (read-only)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import Any

import typer

from leadpulse.commands.cli_output import fail
from leadpulse.commands.settings_arg import cli_settings
from streams.settings import Settings

# Day counts are turned into milliseconds in Int64 query parameters: 10**12 days wrapped round and gave
# silently wrong reports. A century is more than any report needs.
MAX_DAYS = 36_500
SINCE = typer.Option(
    None, "--since", help="start: 2026-01-31, an ISO datetime, or an age like 30d (default 90d)"
)
UNTIL = typer.Option(None, "--until", help="end, exclusive (default now)")
FORMAT = typer.Option("table", "--format", metavar="[table|csv|json]", help="output format")


def _section(names: str) -> Any:
    """``--section``, with the report's own section names (the help named health's ``flagged`` for all)."""
    first = names.split(",")[0]
    return typer.Option(
        None,
        "--section",
        help=f"print only this section ({names}), e.g. `--format csv --section {first}` for one plain CSV "
        "table (a report of several sections separates them with '# name' lines)",
    )


def _query_failure(exc: Exception, settings: Settings) -> typer.Exit:
    """A refused query as one line (exit 2). When the ``leadpulse`` database does not exist, also say which
    ClickHouse was read: "no tables here yet" did not say where "here" was, and a user who ran the demo in
    another directory (``bash run.sh demo`` runs it in the repository) or with another LEADPULSE_DATA_DIR
    read an empty ``.leadpulse`` without knowing it."""
    message = str(exc)
    if message.startswith("UNKNOWN_DATABASE"):
        if settings.clickhouse_dsn:
            where = f"ClickHouse read: {settings.shown_dsn} (LEADPULSE_CLICKHOUSE_DSN)"
        else:
            where = (
                f"ClickHouse read: {settings.shown_dsn} (LEADPULSE_DATA_DIR={settings.data_dir}); if "
                "`leadpulse demo` stored its data elsewhere (it prints 'data kept in DIR'), set "
                "LEADPULSE_DATA_DIR=DIR"
            )
        message = f"{message.rstrip('.')}. {where}"
    return fail(message, 2)


def _check_format(fmt: str) -> None:
    """Before any query runs: a bad --format is the user's typo, not a reason to print a traceback."""
    from sinks.reports.render import FORMATS

    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}", 2)


def _run_report(
    since: str | None,
    until: str | None,
    fmt: str,
    build: Callable[..., object],
    needs_data: bool = True,
    section: str | None = None,
) -> None:
    from sinks.query_service import QueryError, query_runner
    from sinks.reports.period import make_period
    from sinks.reports.render import render

    _check_format(fmt)
    settings = cli_settings()
    try:
        period = make_period(since, until, int(time.time() * 1000))
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    run, close = None, None
    try:
        if needs_data:
            run, close = query_runner(settings)
        sections = build(run, period)
    except (QueryError, ValueError) as exc:
        raise _query_failure(exc, settings) from None
    except Exception as exc:
        raise _engine_failure(exc) from None
    finally:
        if close is not None:
            close()
    if section is not None:
        sections = _only(sections, section)  # type: ignore[arg-type]
    _print(render(sections, fmt))  # type: ignore[arg-type]


def _engine_failure(exc: Exception, any_error: bool = False) -> typer.Exit:
    """A ClickHouse error as one line (exit 2 when ClickHouse refused the query: a column a store one
    migration behind lacks, a missing grant; 1 when the connection failed). A report let it out as a
    traceback. Other errors are re-raised unless ``any_error`` (`leadpulse sql` prints any as a line)."""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    if not any_error and not isinstance(exc, DatabaseError):
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    first = re.sub(r"^(Code: \d+\. DB::Exception: )\1", r"\1", first)  # chDB says it twice
    refused = isinstance(exc, DatabaseError) and not isinstance(exc, OperationalError)
    return fail(f"{type(exc).__name__}: {first}", 2 if refused else 1)


def _only(sections: dict[str, object], name: str) -> dict[str, object]:
    """One section, for tools that read a single CSV table (pandas, spreadsheets, ``COPY``)."""
    if name not in sections:
        raise fail(f"--section: this report has no section {name!r}; it has {', '.join(sections)}", 2)
    return {name: sections[name]}


def _print(text: str) -> None:
    """Rendered output ends with exactly one newline (CSV already ended with one: a blank last line)."""
    typer.echo(text.rstrip("\n"))


def register(app: typer.Typer) -> None:
    report = typer.Typer(help="Content, health, funnel, SLA and plan reports.", no_args_is_help=True)
    app.add_typer(report, name="report")

    @report.command("content", help="Content performance per item.")
    def content_cmd(
        since: str = SINCE,
        until: str = UNTIL,
        fmt: str = FORMAT,
        window_days: int = typer.Option(30, min=1, max=MAX_DAYS, help="attribution window in days"),
        section: str = _section("content"),
    ) -> None:
        from sinks.reports.content import content_report

        _run_report(
            since, until, fmt, lambda run, period: content_report(run, period, window_days), section=section
        )

    @report.command("health", help="Unused and stale content, funnel-stage coverage.")
    def health_cmd(
        since: str = SINCE,
        until: str = UNTIL,
        fmt: str = FORMAT,
        unused_days: int = typer.Option(90, min=1, max=MAX_DAYS, help="unused: no touch in this many days"),
        stale_days: int = typer.Option(365, min=1, max=MAX_DAYS, help="stale: not updated in this many days"),
        section: str = _section("flagged, coverage"),
    ) -> None:
        from sinks.reports.health import health_report

        _run_report(
            since,
            until,
            fmt,
            lambda run, period: health_report(run, period, unused_days, stale_days),
            section=section,
        )

    @report.command(
        "funnel",
        help="Leads per stage, conversion, velocity, recycles, why leads were rejected and deals lost.",
    )
    def funnel_cmd(
        since: str = SINCE,
        until: str = UNTIL,
        fmt: str = FORMAT,
        section: str = _section("stages, recycles, feedback"),
    ) -> None:
        from sinks.reports.funnel import funnel_report

        _run_report(since, until, fmt, funnel_report, section=section)

    @report.command("sla", help="Follow-up time percentiles, compliance, breaches per owner.")
    def sla_cmd(
        since: str = SINCE,
        until: str = UNTIL,
        fmt: str = FORMAT,
        sla_hours: float = typer.Option(24.0, min=0.01, max=MAX_DAYS * 24, help="follow-up SLA in hours"),
        section: str = _section("follow_up, by_owner, owner_compliance"),
    ) -> None:
        from sinks.reports.sla import sla_report

        _run_report(
            since, until, fmt, lambda run, period: sla_report(run, period, sla_hours), section=section
        )

    @report.command("plan", help="The Model reverse calculation from a revenue target.")
    def plan_cmd(
        target: str = typer.Option(..., help="revenue target for the period (10000000, 10M, 250k)"),
        deal_size: str = typer.Option(..., help="average deal size (1000000, 1M, 250k)"),
        rates: str = typer.Option(
            None,
            help="override rates, e.g. visitor_to_lead=5%,lead_to_mql=0.1,"
            "mql_to_opportunity=0.25,opportunity_to_customer=0.5",
        ),
        since: str = SINCE,
        until: str = UNTIL,
        fmt: str = FORMAT,
        section: str = _section("plan"),
    ) -> None:
        from sinks.reports.plan import RATE_KEYS, parse_amount, parse_rates, plan_report

        try:
            amount, deal = parse_amount(target, "--target"), parse_amount(deal_size, "--deal-size")
            overrides = parse_rates(rates)
        except ValueError as exc:
            raise fail(str(exc), 2) from None
        needs_data = bool(set(RATE_KEYS) - set(overrides))
        _run_report(
            since,
            until,
            fmt,
            lambda run, period: plan_report(run, period, amount, deal, overrides),
            needs_data,
            section,
        )

    @app.command(
        "sql",
        help='Run one read-only query, e.g. leadpulse sql "SELECT count() FROM leadpulse.events"; '
        "`leadpulse sql -` reads it from standard input",
        # a query that starts with a "-- comment" line is the query, not an unknown option
        context_settings={"ignore_unknown_options": True},
    )
    def sql_cmd(
        query: str = typer.Argument(..., metavar="QUERY", help="SQL, or - for standard input"),
        fmt: str = FORMAT,
    ) -> None:
        from sinks.query_service import QueryError, query_runner
        from sinks.reports.render import render

        _check_format(fmt)
        if query == "-":
            query = sys.stdin.read()
        settings = cli_settings()
        try:
            run, close = query_runner(settings)
        except QueryError as exc:
            raise fail(str(exc), 2) from None
        try:
            result = run(query, None)
        except QueryError as exc:
            raise _query_failure(exc, settings) from None
        except Exception as exc:
            raise _engine_failure(exc, any_error=True) from None
        finally:
            close()
        _print(render({"result": result.section()}, fmt, plain_numbers=True))
