"""What commands print beside their results: errors, wide tables on a pipe, a note on a temporary broker."""

from __future__ import annotations

import typer
from rich.console import Console

from streams.settings import Settings

PIPED_WIDTH = 400  # columns for tables written to a pipe or file


def report_error(message: str) -> None:
    """One line on stderr, ``leadpulse: error: ...`` for every command, as main() prints broker and port
    problems: commands used to say ``error:``, ``leadpulse generate:`` or a rich ``error:`` wrapped to the
    terminal's width, which scripts and log searches could not match in one way."""
    typer.echo(f"leadpulse: error: {message}", err=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Report an error and return the exit to raise: 2 for what the user must fix in the command line,
    input files or settings, 1 when something it talks to failed."""
    report_error(message)
    return typer.Exit(code=code)


def note_temporary_broker(settings: Settings) -> None:
    """Publishing commands start an embedded broker for themselves when none runs; its in-memory topics end
    with the command, so say so rather than report "sent" for records nobody will read."""
    from streams.broker import no_embedded_broker_running

    if no_embedded_broker_running(settings):
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
