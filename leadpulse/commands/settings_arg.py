"""Load settings for a command, turning a settings error into a clean CLI message (exit code 2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from leadpulse.commands.cli_output import fail
from streams.settings import ENV_PREFIX, Settings, SettingsError, load_settings


def cli_settings(*, flags: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment with the command's options on top. ``flags`` maps a setting to the
    option that gave it, so an error names what the user typed (``--dsn: ...``), not the variable they
    never set (``LEADPULSE_CLICKHOUSE_DSN: ...``)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return load_settings(**given)
    except SettingsError as exc:
        message = str(exc)
        for setting, flag in (flags or {}).items():
            if setting in given:
                message = message.replace(f"{ENV_PREFIX}{setting.upper()}:", f"{flag}:")
        raise fail(message, 2) from None
