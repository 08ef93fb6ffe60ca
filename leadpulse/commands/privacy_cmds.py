"""CLI commands: privacy (``forget``). The work is in ``sinks.forget.forget_lead``; docs/privacy.md."""

from __future__ import annotations

import typer

from leadpulse.commands.cli_output import fail
from leadpulse.commands.settings_arg import cli_settings


def register(app: typer.Typer) -> None:
    @app.command(
        "forget",
        help="Erase a lead (and its linked anonymous ids) from ClickHouse and agent state, for good: "
        "a replay does not bring it back. See docs/privacy.md.",
    )
    def forget_cmd(
        lead_id: str = typer.Argument(..., metavar="LEAD_ID", help="the lead's id (lead_id)"),
        yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
        timeout: float = typer.Option(
            60.0, min=1.0, help="seconds to wait for a running sink to apply the erasure"
        ),
    ) -> None:
        from sinks.forget import ForgetError, forget_lead

        settings = cli_settings()
        if not lead_id.strip():
            raise fail("LEAD_ID must not be empty", 2)
        if not yes:
            typer.confirm(
                f"Erase lead {lead_id!r} and everything linked to it? This cannot be undone", abort=True
            )
        try:
            result = forget_lead(settings, lead_id, timeout_s=timeout, note=lambda m: typer.echo(m, err=True))
        except ForgetError as exc:
            raise fail(f"forget {lead_id}: {exc}") from None
        width = max(len(t) for t in result.rows)
        typer.echo(
            f"erased lead {result.lead_id} (erasure {result.erasure_id}, applied by {result.applied_by})"
        )
        for table, rows in result.rows.items():
            if table.endswith("_daily"):
                unit = "key(s) recomputed"
            elif table == "account_scores":  # the account's row stays; the lead leaves its top-lead list
                unit = "row(s) rewritten without the lead"
            else:
                unit = "row(s) removed"
            typer.echo(f"  leadpulse.{table:<{width}}  {rows} {unit}")
        if not result.skipped and result.total == 0:
            typer.echo(
                f"note: nothing stored for {lead_id!r} in ClickHouse (check the id: ids are case-sensitive); "
                "the erasure is recorded anyway, so records of it that arrive later are dropped",
                err=True,
            )
