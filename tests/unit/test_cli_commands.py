"""Every command name is registered once. A stub ``replay`` ("not built yet: issue #4") stayed registered
beside the real one; the real one won only because its module registers later."""

from __future__ import annotations

from collections import Counter

import pytest
import typer.main

from leadpulse.cli import app

pytestmark = pytest.mark.unit


def test_each_command_name_is_registered_once_and_none_is_a_stub() -> None:
    names = Counter(
        [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]
        + [g.name or "" for g in app.registered_groups]
    )
    assert [name for name, n in names.items() if n > 1] == []
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert "not built" not in (command.help or ""), name
    assert {
        "demo",
        "worker",
        "broker",
        "collector",
        "migrate",
        "produce",
        "replay",
        "report",
        "sql",
        "bench",
    } <= set(
        group.commands  # type: ignore[attr-defined]
    )
