"""Load settings for a command, turning a settings error into a clean CLI message (exit code 2)."""

from __future__ import annotations

from typing import Any

import typer

from streams.settings import Settings, SettingsError, load_settings


def cli_settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
