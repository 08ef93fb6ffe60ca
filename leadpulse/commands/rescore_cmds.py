"""CLI command: ``leadpulse rescore --rules NEW.yaml --dry-run [FILE_OR_TOPIC]`` (DESIGN §3, safe re-scoring).

The history is a JSONL file, one input topic (``events.web_visits``, ...) or ``inputs`` (all six input topics
of the configured broker and prefix, the default: DESIGN §3 writes the command without a history), replayed
in event-time order. Why the topics and not ClickHouse: ClickHouse keeps a keyed hash of each profile's email,
not the email, so the email-domain disqualification rules could not be replayed from it.

Thin: parses arguments, loads both rule sets and the history, calls ``agents.rescore.rescore`` and prints.
Only ``--dry-run`` exists: applying new rules to live leads is the worker's job (restart it with the new
file).
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agents.rescore import HistoryError, RescoreReport, drop_erased, read_history, rescore
from agents.rescore_history import CompactHistory
from agents.rules import RulesError, load_rules
from leadpulse.commands.cli_output import fail, stdout_console
from leadpulse.commands.settings_arg import cli_settings
from schemas.coercion import to_millis
from streams.settings import Settings
from streams.topics import INPUTS, contract_name

SHOWN_SKIPPED = 5


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


SHOWN_UNMATCHED = 10  # unmatched rules named in the table's summary

#: The CSV columns, in this order whatever the report holds (spreadsheets and scripts key on them).
CSV_COLUMNS = ("lead_id", "old_stage", "new_stage", "old_band", "new_band", "old_score", "new_score", "delta")


def render_csv(report: RescoreReport) -> str:
    """One row per lead that changes (header only when none does), scores to 3 decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in report.changes:
        scores = (f"{c.old_score:.3f}", f"{c.new_score:.3f}", f"{c.delta:.3f}")
        writer.writerow((c.lead_id, c.old_stage, c.new_stage, c.old_band, c.new_band, *scores))
    return out.getvalue()


def summary_lines(report: RescoreReport) -> list[str]:
    """What the table does not say at a glance: an empty history, no change, or who moves where, the new
    category rules that look like a typo, and those this history cannot test."""
    if report.events == 0:
        return ["The history has no events: nothing to compare."]
    lines = []
    if not report.changes:
        lines.append(f"No lead would change stage or band ({report.leads} leads, {report.events} events).")
    for kind in ("stage", "band"):
        moves = report.moves(kind)
        if moves:
            lines.append(f"{kind} moves: " + ", ".join(f"{move} {n}" for move, n in moves.items()))
    for name, typo in report.likely_typos.items():
        lines.append(
            f"{name} matched no event, but {typo.events} event(s) have {name.partition('.')[0]} "
            f"{typo.value!r}, which no rule names: a typo?"
        )
    # the others: this history has no such category (generated traffic has no case-study downloads), so the
    # run says nothing of them; no warning (a fallback event_type rule is never listed: unmatched_rules)
    quiet = [name for name in report.unmatched_rules if name not in report.likely_typos]
    if quiet:
        lines.append(
            f"{len(quiet)} category rule(s) of the new file had no event to score in this history, so it "
            "tells nothing about them: "
            + ", ".join(quiet[:SHOWN_UNMATCHED])
            + (" and more (--format json lists all)" if len(quiet) > SHOWN_UNMATCHED else "")
        )
    return lines


def render_table(report: RescoreReport, console: Console) -> None:
    if not report.changes:  # an empty table with a title read like a rendering problem
        for line in summary_lines(report):
            console.print(line, highlight=False)
        return
    table = Table(
        title=f"rescore dry run: {report.events} events, {report.leads} leads, "
        f"{len(report.changes)} would change ({report.stage_changes} stage, {report.band_changes} band)"
    )
    for column in ("lead", "stage", "band", "score old", "score new", "delta"):
        table.add_column(column, justify="right" if column.startswith(("score", "delta")) else "left")
    for c in report.changes:
        stage = c.old_stage if not c.stage_changed else f"{c.old_stage} -> {c.new_stage}"
        band = c.old_band if c.old_band == c.new_band else f"{c.old_band} -> {c.new_band}"
        # Text: rich reads a str cell as markup, and a lead id is anyone's ("[/x]" raised MarkupError)
        table.add_row(
            Text(c.lead_id), stage, band, f"{c.old_score:.1f}", f"{c.new_score:.1f}", f"{c.delta:+.1f}"
        )
    console.print(table)
    for line in summary_lines(report):
        console.print(line, highlight=False)


def _note(message: str) -> None:
    typer.echo(f"leadpulse rescore: {message}", err=True)


def _note_erased(count: int) -> None:
    if count:
        _note(f"left out {count} records of leads erased with `leadpulse forget`")


def _erasures(settings: Settings) -> set[str] | None:
    """Identities on the configured broker's erasure log, or None (and a note) when it cannot be read.

    None, not a failure: a history file is already in the user's hands, and a dry run only prints. Refusing
    would stop rules work whenever the broker is away (an export checked on a laptop); filtering there is to
    keep an erased lead out of the report as a topic replay does (DESIGN §10), so the note says it may be in.
    No broker is started for this: an embedded one would have an empty log, which says nothing."""
    from kafka.errors import KafkaError

    from streams.broker import port_open
    from streams.erasures import erased_identities

    where = settings.bootstrap
    hosts = [part.strip().rpartition(":") for part in where.split(",")]
    problem = f"no broker at {where}"
    if any(port_open(host.strip("[]"), int(port), timeout=1.0) for host, _, port in hosts):
        try:
            return erased_identities(settings)
        except (KafkaError, TimeoutError, OSError) as exc:
            problem = f"the erasure log at {where} could not be read ({type(exc).__name__}: {exc})"
    _note(
        f"erasures not checked: {problem}, so leads erased with `leadpulse forget` may be in this report "
        "(start `leadpulse broker` or set LEADPULSE_KAFKA_BOOTSTRAP to leave them out)"
    )
    return None


def _history(source: str) -> CompactHistory:
    """Events of a file, or of input topics read from the configured broker (nothing is consumed), held
    compactly (``agents.rescore_history``: months of topics did not fit in memory as decoded records). Records
    of erased leads are left out of both (a file's: when the broker's erasure log can be read, _erasures)."""
    path = Path(source)
    if path.exists() and not path.is_dir():  # also /dev/null (check a rules file) and <(zcat history.gz)
        events = read_history(path)
        gone = _erasures(cli_settings()) if len(events) else None
        if gone:
            _note_erased(drop_erased(events, gone.__contains__))
        return events
    settings = cli_settings()
    # with or without the deployment prefix, as `produce --topic` and `dlq list --topic` take it
    names = [t.name for t in INPUTS] if source == "inputs" else [contract_name(source, settings.topic_prefix)]
    unknown = [n for n in names if n not in {t.name for t in INPUTS}]
    if unknown:
        raise HistoryError(
            f"history: {source!r} is neither a file nor an input topic; use a JSONL file, 'inputs' or one "
            f"of {', '.join(t.name for t in INPUTS)}"
        )
    from streams.broker import no_embedded_broker_running
    from streams.reader import read_input_history

    if no_embedded_broker_running(settings):
        raise HistoryError(
            f"history: reading {source!r} needs a running broker; none at {settings.bootstrap} (start "
            "`leadpulse broker`, set LEADPULSE_KAFKA_BOOTSTRAP, or give a history file such as "
            "`leadpulse generate --out history.jsonl` writes)"
        )
    events = CompactHistory()
    history = read_input_history(settings, [settings.topic(n) for n in names], keep=events.append)
    skipped = history.skipped
    _note_erased(history.erased)
    if skipped:
        shown = "".join(f"\n  {line}" for line in skipped[:SHOWN_SKIPPED])
        more = f"\n  ... and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
        typer.echo(
            f"leadpulse rescore: skipped {len(skipped)} records the worker dead-letters (see `leadpulse dlq "
            f"list`):{shown}{more}",
            err=True,
        )
    return events


def _now_ms(now: str | None) -> int:
    if not now:
        return int(time.time() * 1000)
    try:
        return to_millis(int(now) if now.isdigit() else now)
    except ValueError as exc:
        raise ValueError(f"--now: {exc}") from None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def register(app: typer.Typer) -> None:
    @app.command("rescore", help="Replay history with new rules and show who would change stage or band.")
    def rescore_cmd(
        history: str = typer.Argument(
            "inputs",
            metavar="HISTORY",
            help='JSONL file (one {"type": schema, ...fields} per line), an input topic name such as '
            "events.web_visits, or 'inputs' for all six input topics of the configured broker",
            show_default=True,
        ),
        rules: Path = typer.Option(..., "--rules", exists=True, dir_okay=False, help="The new rules YAML"),
        old_rules: Path | None = typer.Option(
            None, "--old-rules", help="Rules in use (default: LEADPULSE_RULES, else the shipped defaults)"
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="Required: report only, emit nothing"),
        fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv"),
        now: str | None = typer.Option(
            None,
            "--now",
            help="Replay as of this time (ISO-8601 or epoch ms; default: now): events after it are left "
            "out (counted), and SLA/recycle timers run up to it",
        ),
    ) -> None:
        if not dry_run:
            raise fail(
                "only --dry-run is supported; to apply new rules, restart the worker with LEADPULSE_RULES "
                "pointing at the new file",
                2,
            )
        given_old = old_rules is not None
        if old_rules is None:
            old_rules = cli_settings().rules
        # which file is wrong: both are often called rules.yaml, and the error names only the file's name
        loaded = []
        for option, path in (
            ("--old-rules" if given_old else "LEADPULSE_RULES", old_rules),
            ("--rules", rules),
        ):
            try:
                loaded.append(load_rules(path))
            except RulesError as exc:
                raise fail(f"{option}: {exc}", 2) from None
        old, new = loaded
        try:
            now_ms = _now_ms(now)
            report = rescore(_history(history), old, new, now_ms)
        except (RulesError, HistoryError, ValueError) as exc:
            raise fail(str(exc), 2) from None
        if report.after_now and fmt is not Format.json:  # json has it as after_now
            when = f"--now ({_iso(now_ms)})" if now else f"the time of this run ({_iso(now_ms)}, --now)"
            _note(f"left out {report.after_now} events with an event_time after {when}")
        if fmt is Format.json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
        elif fmt is Format.csv:
            typer.echo(render_csv(report), nl=False)
        else:
            render_table(report, stdout_console())
