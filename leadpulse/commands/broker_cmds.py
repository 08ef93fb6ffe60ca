"""CLI commands: the local broker, topic creation and publishing JSONL files."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from leadpulse.commands.cli_output import fail, note_temporary_broker, report_error, stdout_console
from leadpulse.commands.settings_arg import cli_settings
from streams.broker import (
    BROKER_DEFAULT_REPLICATION,
    BrokerError,
    create_topics,
    kafka_client_config,
    partition_mismatches,
    port_open,
    running_broker,
    speaks_kafka,
)
from streams.producer import DeliveryError, ProduceReport, produce_file, resolve
from streams.topics import TOPICS

console = Console(stderr=True)
topics_app = typer.Typer(help="Manage the topic catalogue.", no_args_is_help=True)


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@topics_app.command("create", help="Create every catalogue topic that does not exist yet.")
def topics_create() -> None:
    settings = cli_settings()
    config = None if settings.embedded_broker else kafka_client_config(settings)
    note_temporary_broker(settings)  # else "created" topics that end with the command
    replicas = settings.topic_replication_factor
    with running_broker(settings, with_topics=False) as bootstrap:
        created = create_topics(
            bootstrap, settings.topic_prefix, admin_config=config, replication_factor=replicas
        )
        problems = partition_mismatches(bootstrap, settings.topic_prefix, admin_config=config)
    console.print(f"created {len(created)} topic(s): {', '.join(created) or '(all existed)'}")
    if created:
        console.print(f"replication factor: {_replication(replicas, created)}", soft_wrap=True)
    for problem in problems[:-1]:
        report_error(problem)
    if problems:
        raise fail(problems[-1])


def _replication(asked: int, created: dict[str, int]) -> str:
    """What was asked and what the broker says it made: a production cluster answering 1 is the thing an
    operator must see at once (LEADPULSE_TOPIC_REPLICATION_FACTOR)."""
    reported = sorted({factor for factor in created.values() if factor >= 0})
    wanted = "the broker's default" if asked == BROKER_DEFAULT_REPLICATION else str(asked)
    got = ", ".join(map(str, reported)) if reported else "not reported by the broker"
    return f"{got} (asked: {wanted}; LEADPULSE_TOPIC_REPLICATION_FACTOR)"


@topics_app.command("list", help="Show the topic catalogue (names, schemas, partitions, retention).")
def topics_list() -> None:
    settings = cli_settings()
    table = Table("topic", "schema", "role", "partitions", "cleanup", "retention")
    for spec in TOPICS:
        configs = spec.configs()
        retention = "forever" if spec.retention_ms is None else f"{spec.retention_ms // 86_400_000} d"
        table.add_row(
            settings.topic(spec.name),
            spec.schema,
            spec.role,
            str(spec.partitions),
            configs["cleanup.policy"],
            retention,
        )
    stdout_console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(topics_app, name="topics")

    @app.command(
        "broker",
        help="Start the embedded Tansu broker on loopback, create the topics, run until "
        "Ctrl-C / SIGTERM. Does nothing local when LEADPULSE_KAFKA_BOOTSTRAP is set.",
    )
    def broker_cmd(
        port: int = typer.Option(None, help="Listen port (default LEADPULSE_BROKER_PORT, 9092)."),
    ) -> None:
        settings = cli_settings(broker_port=port, flags={"broker_port": "--port"})
        if not settings.embedded_broker:
            console.print(
                f"LEADPULSE_KAFKA_BOOTSTRAP is set ({settings.bootstrap}): not starting a local broker."
            )
            raise typer.Exit(0)
        try:
            if port_open(settings.broker_host, settings.broker_port):  # nothing would be started
                raise BrokerError(
                    f"port {settings.bootstrap} is already in use"
                    + (": a Kafka broker runs there" if speaks_kafka(settings.bootstrap) else "")
                    + "; stop it, or set LEADPULSE_BROKER_PORT (--port) for another broker"
                )
            with running_broker(settings, log_file=_log_file(settings.data_dir)) as bootstrap:
                console.print(
                    f"[green]Tansu broker ready on {bootstrap}[/] (in-memory storage; Ctrl-C stops)"
                )
                for problem in partition_mismatches(bootstrap, settings.topic_prefix):
                    report_error(problem)
                wait_for_signal()
        except BrokerError as exc:
            raise fail(str(exc)) from None
        console.print("broker stopped")

    @app.command("produce", help="Validate and publish a JSONL file (one event per line) to a topic.")
    def produce_cmd(
        file: Path = typer.Argument(
            ..., exists=True, dir_okay=False, readable=True, metavar="FILE.jsonl", help="one record per line"
        ),
        topic: str = typer.Option(
            ..., "--topic", "-t", help="Topic (e.g. events.web_visits) or schema name."
        ),
    ) -> None:
        settings = cli_settings()
        try:
            resolve(topic, settings.topic_prefix)
        except ValueError as exc:
            raise fail(str(exc), 2) from None
        note_temporary_broker(settings)
        try:
            with running_broker(settings) as bootstrap:
                report = produce_file(settings, file, topic, bootstrap=bootstrap)
        except DeliveryError as exc:
            _print_rejected(exc.report or ProduceReport())  # the lines refused before the broker went
            raise fail(str(exc)) from None
        except BrokerError as exc:
            raise fail(str(exc)) from None
        _print_rejected(report)
        console.print(f"sent {report.sent}, rejected {len(report.rejected)}")
        raise typer.Exit(1 if report.rejected else 0)


#: Control characters as their escapes: a reason quotes the line's own field names, and a JSON key holding a
#: line break ("a\nb") split the reason over two lines of stderr (or printed a line of its own: "line 7: …").
_CONTROLS = {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0))}


def _print_rejected(report: ProduceReport) -> None:
    for line, reason in report.rejected:
        # escaped: a reason quotes the line's own field names and values ("[/x]" raised MarkupError), and
        # emoji=False: rich read a field named ":smile:" as an emoji code;
        # soft_wrap: one line each however long, as errors are (piped, rich wrapped them at 80 columns)
        shown = escape(reason.translate(_CONTROLS))
        console.print(f"[yellow]line {line}:[/] {shown}", soft_wrap=True, emoji=False)


def _log_file(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir / "tansu.log"
