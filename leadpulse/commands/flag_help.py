"""Boolean flags in ``--help`` render as plain flags (``--dry-run``), not ``--dry-run <bool>``.

Why a patch: typer 0.29's rich help panel (``typer.rich_utils._print_options_panel``) prints
``TyperOption.display_type_rich()`` for every option, flags included, so each flag, ``--help`` too, showed a
``<bool>`` column as if it took a value. Typer's own plain help (``TyperOption.get_help_record``) skips the
type for flags and counters; this makes the rich panel do the same. Applied once, by ``leadpulse.cli``.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_typer_display_type_rich = TyperOption.display_type_rich


def _display_type_rich(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag or self.count:
        return None  # a flag takes no value: there is no type to show
    return _typer_display_type_rich(self, ctx)


def plain_flags_in_help() -> None:
    patched: Any = _display_type_rich
    TyperOption.display_type_rich = patched  # type: ignore[method-assign]
