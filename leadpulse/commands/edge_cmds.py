"""CLI commands: the ingestion edge (``collector``), dead letters (``dlq list|show|replay``), ``notifier``."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from leadpulse.commands.cli_output import fail, stdout_console
from leadpulse.commands.settings_arg import cli_settings
from streams.broker import BrokerError, no_embedded_broker_running, running_broker
from streams.dlq import (
    STAGES,
    DeadLetter,
    check_filters,
    find_dead_letters,
    list_dead_letters,
    parse_since,
    replay,
)
from streams.logs import setup_logging
from streams.settings import Settings

console = Console(stderr=True)
dlq_app = typer.Typer(help="Inspect and replay dead letters (topic dlq).", no_args_is_help=True)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _since(text: str | None) -> int | None:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise fail(str(exc), 2) from None


def _filters(topic: str | None, stage: str | None, prefix: str) -> None:
    try:
        check_filters(topic, stage, prefix)
    except ValueError as exc:
        raise fail(str(exc), 2) from None


def _need_running_broker(settings: Settings) -> None:
    """Dead letters are records on the broker's ``dlq`` topic. With no broker running, ``running_broker``
    would start an empty embedded one (its topics live in memory), so ``dlq list`` printed "0 dead
    letter(s)" after a demo had ended, as if none had been written: say where they went instead."""
    if no_embedded_broker_running(settings):
        raise fail(
            f"no broker is running at {settings.bootstrap}, so there are no dead letters to read: the "
            "embedded broker keeps its topics (dlq among them) in memory only while the process that started "
            "it runs (`leadpulse broker`, `leadpulse worker`, `leadpulse demo`); start `leadpulse broker` "
            "and the pipeline first, or set LEADPULSE_KAFKA_BOOTSTRAP (LEADPULSE_BROKER_PORT if yours "
            "listens elsewhere)"
        )


#: Bytes of a dead letter's key/value shown in hex unless ``dlq show --full`` (a 64 KiB record is 128k chars).
SHOWN_BYTES = 256
SHOWN_CHARS = 2000  # of the decoded record's JSON


def _show_bytes(data: bytes | None, full: bool = False) -> str:
    if data is None:
        return "(none)"
    text = data.decode("utf-8", errors="replace")
    shown = data if full or len(data) <= SHOWN_BYTES else data[:SHOWN_BYTES]
    more = "" if len(shown) == len(data) else f"… first {SHOWN_BYTES} shown, --full for all;"
    return f"{shown.hex()}  ({len(data)} bytes;{more} as text: {text[:200]!r})"


def describe(letter: DeadLetter, full: bool = False) -> str:
    """Full text of one dead letter: where it came from, why, and the original bytes with a decode attempt."""
    r = letter.record
    lines = [
        f"dlq {letter.address}",
        f"  source      {r['source_topic']}[{r['partition']}]@{r['offset']}",
        f"  stage       {r['stage']}",
        f"  written by  {letter.writer or '(not recorded)'}",
        f"  error_type  {r['error_type']}",
        f"  error       {r['error']}",
        f"  failed_at   {_when(r['failed_at'])} UTC",
        f"  event_id    {r.get('event_id')}",
        f"  key         {_show_bytes(r.get('key'), full)}",
        f"  value       {_show_bytes(r.get('value'), full)}",
    ]
    decoded = letter.decoded_original()
    if isinstance(decoded, tuple):
        text = json.dumps(decoded[1], default=str, sort_keys=True)
        if not full and len(text) > SHOWN_CHARS:  # a 70 KB url filled the terminal (audit)
            more = f"({len(text)} characters, first {SHOWN_CHARS} shown, --full for all)"
            text = f"{text[:SHOWN_CHARS]}… {more}"
        lines.append(f"  decoded     {decoded[0]}: {text}")
    else:
        lines.append(f"  decoded     not decodable: {decoded}")
    return "\n".join(lines)


@dlq_app.command("list", help="Table of recent dead letters: topic/partition/offset/stage/writer/error.")
def dlq_list(
    topic: str = typer.Option(None, "--topic", "-t", help="Only this source topic."),
    since: str = typer.Option(None, help="Only newer: 30m, 2h, 7d or an ISO-8601 time."),
    stage: str = typer.Option(None, help=f"Only this stage ({', '.join(STAGES)})."),
    limit: int = typer.Option(50, min=1, help="Most recent N."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> None:
    settings = cli_settings()
    since_ms = _since(since)
    _filters(topic, stage, settings.topic_prefix)
    _need_running_broker(settings)
    with running_broker(settings) as bootstrap:
        letters = list_dead_letters(
            settings, topic=topic, since_ms=since_ms, stage=stage, limit=limit, bootstrap=bootstrap
        )
    if as_json:
        for letter in letters:
            row = {k: v for k, v in letter.record.items() if k not in ("key", "value")}
            typer.echo(
                json.dumps({"dlq": letter.address, "written_by": letter.writer, **row}, sort_keys=True)
            )
        return
    table = Table("dlq", "failed at (UTC)", "source topic", "partition", "offset", "stage", "by", "error")
    for letter in letters:
        r = letter.record
        # Text, not str: rich reads a str cell as markup, and an error quotes what others wrote (a webhook
        # receiver's answer, a lead id): "[/hooks]" raised MarkupError, "[b]" vanished
        table.add_row(
            *(
                Text(cell)
                for cell in (
                    letter.address,
                    _when(r["failed_at"]),
                    r["source_topic"],
                    str(r["partition"]),
                    str(r["offset"]),
                    r["stage"],
                    letter.writer or "-",
                    f"{r['error_type']}: {r['error']}"[:120],
                )
            )
        )
    stdout_console().print(table)
    console.print(f"{len(letters)} dead letter(s)")


@dlq_app.command("show", help="One dead letter in full, incl. original bytes (hex) and a decode attempt.")
def dlq_show(
    address: str = typer.Argument(
        ..., metavar="ADDRESS", help="OFFSET or PARTITION:OFFSET on the dlq topic."
    ),
    full: bool = typer.Option(False, "--full", help=f"All original bytes (default: first {SHOWN_BYTES})."),
) -> None:
    settings = cli_settings()
    _need_running_broker(settings)
    with running_broker(settings) as bootstrap:
        try:
            letters = find_dead_letters(settings, address, bootstrap=bootstrap)
        except ValueError as exc:
            raise fail(str(exc), 2) from None
    if not letters:
        console.print(f"[red]no dead letter at {address} on {settings.topic('dlq')}[/]")
        raise typer.Exit(1)
    typer.echo("\n\n".join(describe(letter, full) for letter in letters))


@dlq_app.command(
    "replay",
    help="Re-publish the original bytes of dead letters to their source topics "
    "(after a fix). Safe to repeat: downstream dedups by event id.",
)
def dlq_replay(
    topic: str = typer.Option(None, "--topic", "-t", help="Only dead letters from this topic."),
    since: str = typer.Option(None, help="Only newer: 30m, 2h, 7d or an ISO-8601 time."),
    stage: str = typer.Option(None, help=f"Only this stage ({', '.join(STAGES)})."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be replayed."),
) -> None:
    settings = cli_settings()
    since_ms = _since(since)
    _filters(topic, stage, settings.topic_prefix)
    _need_running_broker(settings)
    with running_broker(settings) as bootstrap:
        report = replay(
            settings, topic=topic, since_ms=since_ms, stage=stage, dry_run=dry_run, bootstrap=bootstrap
        )
    verb = "would replay" if dry_run else "replayed"
    count = sum(report.by_topic.values())
    console.print(
        f"{verb} {count} record(s): " + (", ".join(f"{t}: {n}" for t, n in report.by_topic.items()) or "none")
    )
    for address, reason in report.skipped:
        console.print(f"  skipped dlq {address}: {escape(reason)}")
    for address in report.scrubbed:
        console.print(f"  dlq {address}: without its erased lead(s) in top_leads")


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")

    @app.command(
        "collector",
        help="Run the HTTP collector (POST /v1/events, /v1/tracker.js, /health, /ready, "
        "/metrics) until Ctrl-C / SIGTERM. API: docs/ingestion.md.",
    )
    def collector_cmd(
        host: str = typer.Option(None, help="Listen address (default LEADPULSE_WEB_HOST)."),
        port: int = typer.Option(None, help="Listen port (default LEADPULSE_COLLECTOR_PORT)."),
    ) -> None:
        from streams.collector_process import run_collector
        from streams.collector_publishers import AioKafkaPublisher

        settings = cli_settings()
        if not settings.write_keys:  # say so before starting a local broker for nothing
            raise fail('no write keys: set LEADPULSE_WRITE_KEYS=\'{"web": "<key>"}\'', 2)
        try:
            with running_broker(settings) as bootstrap:

                def listening(bound_host: str, bound_port: int) -> None:  # the OS's port for --port 0
                    console.print(
                        f"collector on {bound_host}:{bound_port} "
                        f"→ {bootstrap}, sources: {', '.join(settings.write_keys) or '(none)'}"
                    )

                setup_logging(settings.log_level)
                publisher = AioKafkaPublisher(settings, bootstrap)
                run_collector(settings, host, port, publisher=publisher, on_listening=listening)
        except ValueError as exc:  # a setting the collector cannot run with
            raise fail(str(exc), 2) from None
        except (OSError, BrokerError) as exc:
            raise fail(str(exc)) from None
        console.print("collector stopped")

    @app.command(
        "notifier",
        help="Deliver hot-lead notifications (leads.hot) to LEADPULSE_WEBHOOK_URLS and "
        "LEADPULSE_SLACK_WEBHOOK_URLS, signed with LEADPULSE_WEBHOOK_SECRET, until Ctrl-C / SIGTERM.",
    )
    def notifier_cmd(
        ops_port: int = typer.Option(
            None, help="Serve /metrics, /health, /ready on this port (default LEADPULSE_NOTIFIER_PORT, 6068)."
        ),
    ) -> None:
        from agents.notifications import run_notifier

        settings = cli_settings()
        if ops_port is None:
            ops_port = settings.notifier_port

        async def main(bootstrap: str) -> None:
            stop = asyncio.Event()
            _stop_on_signals(asyncio.get_running_loop(), stop)
            await run_notifier(
                settings.model_copy(update={"kafka_bootstrap": bootstrap}), stop, ops_port=ops_port
            )

        try:
            with running_broker(settings) as bootstrap:
                console.print(
                    f"notifier → {len(settings.webhook_urls) + len(settings.slack_webhook_urls)} "
                    f"target(s), consuming {settings.topic('leads.hot')} on {bootstrap}"
                )
                setup_logging(settings.log_level)
                asyncio.run(main(bootstrap))
        except ValueError as exc:  # no targets, no secret, a bad URL: settings to fix
            raise fail(str(exc), 2) from None
        except (OSError, BrokerError) as exc:
            raise fail(str(exc)) from None
        console.print("notifier stopped")
