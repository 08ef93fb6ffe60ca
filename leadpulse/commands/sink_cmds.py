"""CLI commands of the ClickHouse side: ``migrate``, ``sink``, ``content load``, ``replay``."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from leadpulse.commands.cli_output import fail, note_temporary_broker
from leadpulse.commands.settings_arg import cli_settings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from streams.settings import Settings

REFUSED_SHOWN = 10  # `replay` names this many refused records; the count covers all


def _open(settings: Settings, get_client: Callable[[Settings], Client], when_owned: str) -> Client:
    """A client, or a one-line error; an embedded directory a running sink owns says so, not chDB's lock
    error."""
    from sinks.clickhouse import EmbeddedEngineBusy

    try:
        return get_client(settings)
    except EmbeddedEngineBusy as exc:
        raise fail(f"{exc} ({when_owned})") from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise fail(f"cannot open ClickHouse at {settings.shown_dsn}: {first}") from None


def _migrations_of_running_sink(settings: Settings) -> str:
    """``migrate`` with a sink owning the directory: the sink migrated it at start, so report (or refuse)
    rather than fail on the lock. A pending migration means the sink runs older code than this CLI."""
    from sinks.migrate import discover
    from sinks.query_service import QueryError, http_runner, sink_url

    try:
        rows = http_runner(sink_url(settings))(
            "SELECT DISTINCT version FROM leadpulse.schema_migrations", None
        )
    except QueryError as exc:
        raise fail(str(exc)) from None
    applied = {int(row[0]) for row in rows.rows}
    pending = [f"{m.version:03d}_{m.name}" for m in discover() if m.version not in applied]
    if pending:
        raise fail(
            f"the sink at {sink_url(settings)} owns {settings.shown_dsn} and has not applied "
            f"{', '.join(pending)}: restart it (it applies pending migrations when it starts)"
        )
    return f"up to date (applied by the running sink at {sink_url(settings)})"


def register(app: typer.Typer) -> None:
    @app.command("migrate", help="Apply pending ClickHouse migrations (idempotent).")
    def migrate_cmd(
        dsn: str = typer.Option(None, help="ClickHouse DSN (default LEADPULSE_CLICKHOUSE_DSN)"),
    ) -> None:
        from sinks.clickhouse import get_client
        from sinks.migrate import migrate
        from sinks.query_service import sink_serving

        settings = cli_settings(clickhouse_dsn=dsn, flags={"clickhouse_dsn": "--dsn"})
        if sink_serving(settings):  # the sink owns the directory and migrated it when it started
            typer.echo(_migrations_of_running_sink(settings))
            return
        client = _open(settings, get_client, "it applied the migrations when it started")
        try:
            applied = migrate(client)
        finally:
            client.close()
        typer.echo("applied: " + ", ".join(applied) if applied else "up to date")

    @app.command(
        "sink",
        help="Consume every input/output topic into ClickHouse; serves /metrics, /health, "
        "/ready and (embedded ClickHouse) the read-only query API on LEADPULSE_SINK_PORT.",
    )
    def sink_cmd(
        batch_rows: int = typer.Option(50_000, min=1, help="flush a table's batch at this many rows"),
        batch_seconds: float = typer.Option(1.0, min=0.01, help="... or this long after its first row"),
    ) -> None:
        from sinks.batch import BatchPolicy
        from sinks.sink_process import run_sink

        settings = cli_settings()
        from streams.logs import setup_logging

        setup_logging(settings.log_level)
        # the sink logs one line per failed ClickHouse attempt; the drivers' own tracebacks add nothing
        for noisy in ("urllib3.connectionpool", "clickhouse_connect.driver._backend.http_sync"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        from sinks.clickhouse import EmbeddedDirectoryUnusable, EmbeddedEngineBusy
        from streams.gc_tuning import tune_gc

        tune_gc()  # as the worker: the sink holds its batches and recent ids for its whole life
        try:
            stats = run_sink(settings, stop, policy=BatchPolicy(batch_rows, batch_seconds))
        except EmbeddedEngineBusy as exc:  # a second sink on the same directory
            raise fail(f"{exc}: one sink per embedded directory (set {settings.dsn_setting})") from None
        except EmbeddedDirectoryUnusable as exc:
            raise fail(str(exc)) from None
        typer.echo(
            f"sink stopped: consumed {stats.consumed}, inserted {stats.inserted}, "
            f"dead-lettered {stats.dead_lettered}",
            err=True,
        )

    content_app = typer.Typer(help="The content catalogue.", no_args_is_help=True)
    app.add_typer(content_app, name="content")

    @content_app.command(
        "load", help="Load a content catalogue (.csv, .json, .jsonl) into leadpulse.content."
    )
    def content_load_cmd(
        path: Path = typer.Argument(
            ..., exists=True, dir_okay=False, metavar="FILE", help="the catalogue: .csv, .json or .jsonl"
        ),
    ) -> None:
        from sinks.catalogue_service import CatalogueServiceError, load_via_sink
        from sinks.clickhouse import get_client
        from sinks.content_catalogue import CatalogueError, load_catalogue, parse_entries, read_file
        from sinks.migrate import migrate
        from sinks.query_service import sink_serving, sink_url

        settings = cli_settings()
        if sink_serving(settings):  # the sink owns the directory: it inserts what we validated here
            try:
                entries = read_file(path)
                parse_entries(entries, str(path))
                count = load_via_sink(sink_url(settings), entries, str(path))
            except CatalogueError as exc:
                raise fail(str(exc), 2) from None
            except CatalogueServiceError as exc:
                raise fail(str(exc)) from None
            typer.echo(f"loaded {count} content item(s) from {path} (through the running sink)")
            return
        client = _open(settings, get_client, "stop it, load the catalogue, start it again")
        try:
            migrate(client)
            count = load_catalogue(client, path)
        except CatalogueError as exc:
            raise fail(str(exc), 2) from None
        finally:
            client.close()
        typer.echo(f"loaded {count} content item(s) from {path}")

    @app.command(
        "replay",
        help="Re-publish stored events and sales activities from ClickHouse to the input "
        "topics for reprocessing (profiles are not replayed: their emails are stored hashed).",
    )
    def replay_cmd(
        since: str = typer.Option(
            None, help="start: 2026-01-31, an ISO datetime, or an age like 30d (default 90d)"
        ),
        until: str = typer.Option(None, help="end, exclusive; default now"),
    ) -> None:
        from sinks.query_service import QueryError, query_runner
        from sinks.replay import replay
        from sinks.reports.period import make_period
        from streams.broker import running_broker
        from streams.erasures import erased_identities
        from streams.producer import Producer

        settings = cli_settings()
        try:
            period = make_period(since, until, int(time.time() * 1000))
            run, close = query_runner(settings)
        except (ValueError, QueryError) as exc:
            raise fail(str(exc), 2) from None
        note_temporary_broker(settings)  # else "replayed" records no worker will read (the broker goes too)
        try:
            with running_broker(settings) as bootstrap, Producer(settings, bootstrap=bootstrap) as producer:
                local = settings.model_copy(update={"kafka_bootstrap": bootstrap})
                erased = erased_identities(local)
                result = replay(run, producer, period.since_ms, period.until_ms, erased)
        finally:
            close()
        if result.erased:
            typer.echo(
                f"left out {result.erased} stored record(s) of leads erased with `leadpulse forget` "
                "(their erasure is not applied to ClickHouse yet: re-run `leadpulse forget` for them)",
                err=True,
            )
        sent = result.sent
        typer.echo("replayed: " + (", ".join(f"{k} {v}" for k, v in sorted(sent.items())) or "nothing"))
        if result.refused:
            for refused in result.refused[:REFUSED_SHOWN]:
                typer.echo(f"not replayed: {refused.schema} {refused.event_id}: {refused.problem}", err=True)
            more = len(result.refused) - REFUSED_SHOWN
            typer.echo(
                f"{len(result.refused)} stored record(s) not replayed: today's checks refuse them"
                + (f" ({more} more not shown)" if more > 0 else ""),
                err=True,
            )
            raise typer.Exit(1)
