"""CLI commands: benchmarks. Each prints its baseline, measured in the same run, and the ratio."""

from __future__ import annotations

import signal
from types import FrameType

import typer

bench_app = typer.Typer(
    help="Benchmarks (each compares with a baseline measured in the same run).", no_args_is_help=True
)


def _unwind(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@bench_app.callback()
def _stop_cleanly() -> None:
    """SIGTERM (``timeout``, a CI job's cancel) unwinds like Ctrl-C: each benchmark's ``finally`` blocks stop
    the broker and worker processes it started and remove its temporary directory. Python's default SIGTERM
    ended the bench at once and left its worker running, orphaned (CLI audit)."""
    signal.signal(signal.SIGTERM, _unwind)


@bench_app.command(
    "worker",
    help="Real worker vs a naive one-table-per-concern Faust worker; latency at half and a tenth of the max.",
)
def bench_worker(
    events: int = typer.Option(200_000, min=1000),
    seed: int = typer.Option(1),
    naive_events: int = typer.Option(None, min=1000, help="Events for the naive worker (default 50k)."),
    latency_seconds: float = typer.Option(20.0, min=1),
) -> None:
    from bench.worker_bench import run_worker_bench

    run_worker_bench(events, seed, naive_events=naive_events, latency_seconds=latency_seconds)


@bench_app.command("sink", help="Sink end to end (topic -> ClickHouse) vs a bare clickhouse-connect insert.")
def bench_sink(events: int = typer.Option(200_000, min=1000)) -> None:
    from bench.sink_bench import run_sink_bench

    run_sink_bench(events=events)


@bench_app.command("collector", help="Collector (batches of 100) vs producing straight through the SDK.")
def bench_collector(events: int = typer.Option(40_000, min=1000)) -> None:
    from bench.collector_bench import run_collector_bench

    run_collector_bench(events=events)


@bench_app.command("soak", help="Worker RSS over >= 1M events from a fixed lead population.")
def bench_soak(
    events: int = typer.Option(1_000_000, min=10_000),
    leads: int = typer.Option(10_000, min=100),
    chunk: int = typer.Option(50_000, min=1000),
) -> None:
    from bench.soak import run_soak

    run_soak(events, leads, chunk)


@bench_app.command(
    "rescore",
    help="rescore --dry-run on a generated history file: memory and time per event vs a list of dicts.",
)
def bench_rescore(
    events: int = typer.Option(100_000, min=1000),
    seed: int = typer.Option(1),
    span_days: float = typer.Option(90.0, min=1, help="Days the history's event times span."),
) -> None:
    from bench.rescore_bench import run_rescore_bench

    run_rescore_bench(events, seed, span_days)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
