"""Commands whose implementation has not landed yet say so plainly instead of pretending."""

from __future__ import annotations

import typer


def not_built(command: str, issue: int) -> None:
    typer.echo(f"leadpulse {command}: not built yet (tracked in issue #{issue}).", err=True)
    raise typer.Exit(code=3)
