"""What commands print beside their results: wide tables on a pipe, a note when a broker is temporary."""

from __future__ import annotations

import typer
from rich.console import Console

from streams.settings import Settings

PIPED_WIDTH = 400  # columns for tables written to a pipe or file


def note_temporary_broker(settings: Settings) -> None:
    """Publishing commands start an embedded broker for themselves when none runs; its in-memory topics end
    with the command, so say so rather than report "sent" for records nobody will read."""
    from streams.broker import port_open

    if settings.embedded_broker and not port_open(settings.broker_host, settings.broker_port):
        typer.echo(
            "note: no broker is running, so one is started for this command only and its in-memory topics "
            "go with it; start `leadpulse broker` first (or set LEADPULSE_KAFKA_BOOTSTRAP) to keep them.",
            err=True,
        )


def stdout_console() -> Console:
    """A console for tables on stdout. Piped or redirected, rich would lay tables out for 80 columns and
    cut or wrap cells (topic names ended in "…"); there is no terminal to fit, so give them room."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)
