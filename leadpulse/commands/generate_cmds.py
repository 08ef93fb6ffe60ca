"""CLI command: ``leadpulse generate`` (synthetic B2B traffic, issue #7; see docs/traffic.md).

Thin: plans the traffic with ``streams.traffic.plan_traffic`` and hands it to ``publish`` with a sink that
writes JSONL (``--out``), sends through the producer SDK to the configured broker (``--via sdk``) or posts
batches to a running HTTP collector (``--via collector``), with a progress bar on stderr.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from leadpulse.commands.cli_output import fail, note_temporary_broker
from leadpulse.commands.settings_arg import cli_settings
from streams.catalogue_file import CatalogueError
from streams.traffic import PublishStats, TrafficPlan, jsonl_line, plan_traffic, publish
from streams.traffic_catalogue import (
    TrafficCatalogueError,
    catalogue_format,
    read_catalogue_file,
    write_catalogue,
)
from streams.traffic_journey import HOUR_MS


def summary(plan: TrafficPlan, stats: PublishStats, where: str) -> str:
    personas = ", ".join(f"{p} {n}" for p, n in sorted(plan.personas().items()))
    misses = sorted(plan.sla_misses)
    shown = ", ".join(misses[:10]) + (" ..." if len(misses) > 10 else "")
    stopped = "" if stats.complete else f" (stopped by --duration after {stats.elapsed_s:.1f} s)"
    return (
        f"sent {stats.sent} of {len(plan.events)} events to {where}{stopped}\n"
        f"leads {len(plan.leads)} + {len(plan.anonymous_visitors)} anonymous visitors ({personas})\n"
        f"hot leads {len(plan.hot_leads)}; left without follow-up (hot_lead_follow_up breaches as of "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(plan.end_ms / 1000))} UTC): {len(misses)}"
        + (f": {shown}" if misses else "")
    )


def register(app: typer.Typer) -> None:
    @app.command(
        "generate",
        help="Generate realistic synthetic B2B traffic (seeded, reproducible) and publish it to the broker "
        "(a running one: with none, its topics go with the command), or write it with --out. "
        "docs/traffic.md.",
    )
    def generate_cmd(
        seed: int = typer.Option(7, "--seed", help="Random seed: the same seed gives the same traffic"),
        leads: int = typer.Option(200, "--leads", min=0, help="Leads (anonymous visitors come on top)"),
        rate: float | None = typer.Option(
            None, "--rate", min=0.001, help="Events per second (default: as fast as possible)"
        ),
        duration: float | None = typer.Option(None, "--duration", min=0.0, help="Stop after S seconds"),
        out: Path | None = typer.Option(
            None,
            "--out",
            dir_okay=False,
            help='Write JSONL ({"type": schema, ...fields}) instead of publishing',
        ),
        content_out: Path | None = typer.Option(
            None,
            "--content-out",
            dir_okay=False,
            help="Write the content catalogue (.csv, .json or .jsonl) for `leadpulse content load`",
        ),
        catalogue: Path | None = typer.Option(
            None,
            "--catalogue",
            exists=True,
            dir_okay=False,
            help="Your content catalogue (.csv/.json/.jsonl, the `content load` columns + optional roles)",
        ),
        manifest: Path | None = typer.Option(
            None,
            "--manifest",
            dir_okay=False,
            help="Write what the plan promises (hot leads, SLA misses, personas) as JSON",
        ),
        span_hours: float = typer.Option(
            72.0, "--span-hours", min=12.0, help="Event times cover the past H hours up to now"
        ),
        live: bool = typer.Option(False, "--live", help="Stamp event_time with the wall clock when sent"),
        via: str = typer.Option(
            "sdk",
            "--via",
            metavar="[sdk|collector]",
            help="Publish through the Python SDK (sdk) or a running HTTP collector (collector)",
        ),
        collector_url: str | None = typer.Option(
            None,
            "--collector-url",
            help="Collector base URL (default: http://127.0.0.1:LEADPULSE_COLLECTOR_PORT)",
        ),
    ) -> None:
        if via not in ("sdk", "collector"):
            raise typer.BadParameter("must be sdk or collector", param_hint="--via")
        span_ms = int(span_hours * HOUR_MS)
        now_ms = int(time.time() * 1000)
        if content_out is not None:
            try:
                catalogue_format(content_out)
            except ValueError as exc:
                raise fail(f"--content-out {exc}", 2) from None
        try:
            own = read_catalogue_file(catalogue) if catalogue is not None else None
        except (CatalogueError, TrafficCatalogueError) as exc:
            raise fail(f"--catalogue {exc}", 2) from None
        try:
            plan = plan_traffic(seed, leads, now_ms - span_ms, span_ms, own)
        except TrafficCatalogueError as exc:  # your ids hide a built-in pool: was a traceback
            raise fail(f"--catalogue {catalogue}: {exc}", 2) from None
        if content_out is not None:
            with _writing("--content-out", content_out):
                write_catalogue(plan.catalogue, content_out)
            typer.echo(f"wrote {len(plan.catalogue)} content items to {content_out}", err=True)
        if manifest is not None:
            with _writing("--manifest", manifest):
                manifest.write_text(json.dumps(plan.manifest(), indent=2) + "\n", encoding="utf-8")
        if out is not None:
            with _writing("--out", out), out.open("w", encoding="utf-8") as handle:

                def write(schema: str, record: dict[str, Any]) -> None:
                    handle.write(jsonl_line(schema, record) + "\n")

                with _progress(len(plan.events)) as advance:
                    stats = publish(plan, _tracked(write, advance), rate, duration, live=live)
            typer.echo(summary(plan, stats, str(out)), err=True)
            return
        if via == "collector":
            stats, where = _publish_to_collector(plan, rate, duration, live, collector_url)
        else:
            stats, where = _publish_to_broker(plan, rate, duration, live)
        typer.echo(summary(plan, stats, where), err=True)


Sink = Callable[[str, dict[str, Any]], Any]


@contextlib.contextmanager
def _writing(option: str, path: Path) -> Iterator[None]:
    """A missing directory or a read-only file is the user's to fix: one line naming the option, exit 2."""
    try:
        yield
    except OSError as exc:
        raise fail(f"{option} {path}: {exc.strerror or exc}", 2) from None


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr (plain, not animated, when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("publishing", total=total)
        yield lambda: progress.advance(task)


def _tracked(sink: Sink, advance: Callable[[], None]) -> Sink:
    def send(schema: str, record: dict[str, Any]) -> None:
        sink(schema, record)
        advance()

    return send


def _publish_to_collector(
    plan: TrafficPlan, rate: float | None, duration: float | None, live: bool, url: str | None
) -> tuple[PublishStats, str]:
    """Through the collector's public API, as a site tracker and a CRM integration would send."""
    from streams.collector_client import CollectorClient, CollectorRejected

    settings = cli_settings()
    crm = sorted(settings.crm_sources)
    browser = sorted(set(settings.write_keys) - set(crm))
    if not crm or not browser:
        raise fail(
            "--via collector needs LEADPULSE_WRITE_KEYS with a site source and a CRM source (see "
            "LEADPULSE_CRM_WRITE_KEY_SOURCES), the same keys the collector runs with",
            2,
        )
    url = url or f"http://127.0.0.1:{settings.collector_port}"
    client = CollectorClient(
        url,
        settings.write_keys[browser[0]].get_secret_value(),
        settings.write_keys[crm[0]].get_secret_value(),
    )
    try:
        with _progress(len(plan.events)) as advance, client:
            stats = publish(plan, _tracked(client.send, advance), rate, duration, live=live)
    except (CollectorRejected, OSError) as exc:
        raise fail(f"collector at {url}: {exc}") from None
    return stats, f"the collector at {url} ({client.accepted} accepted)"


def _publish_to_broker(
    plan: TrafficPlan, rate: float | None, duration: float | None, live: bool
) -> tuple[PublishStats, str]:
    from streams.broker import running_broker
    from streams.producer import DeliveryError, Producer

    settings = cli_settings()
    note_temporary_broker(settings)
    try:
        with (
            running_broker(settings) as bootstrap,
            Producer(settings, bootstrap=bootstrap) as producer,
            _progress(len(plan.events)) as advance,
        ):
            stats = publish(plan, _tracked(producer.send, advance), rate, duration, live=live)
    except DeliveryError as exc:
        raise fail(str(exc)) from None
    return stats, f"{bootstrap} (topic prefix {settings.topic_prefix!r})"
