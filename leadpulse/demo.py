"""``leadpulse demo``: the whole pipeline on one machine, fed with synthetic B2B traffic.

Runs the embedded broker in this process and every service as the same ``leadpulse`` subprocess a user or a
deployment would run (worker, sink with embedded ClickHouse, collector, notifier), plus a local webhook
receiver standing in for the sales team's endpoint. At the end the reports are read through the sink's
query API, printed, and written as an offline HTML report; the data stays under the data directory.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agents.sla import FOLLOW_UP, REJECTION_FEEDBACK
from leadpulse.demo_services import DemoError, DemoUsageError, Service, WebhookReceiver, port_or_free
from leadpulse.live_view import HotLeadFeed, LiveState, render, scored, scrape, total
from sinks.reports.period import Period, make_period
from streams.broker import free_port, running_broker
from streams.collector_client import CollectorClient
from streams.producer import Producer
from streams.settings import Settings
from streams.traffic import TrafficPlan, plan_traffic, publish
from streams.traffic_catalogue import write_catalogue

HOUR_MS = 3_600_000


@dataclass
class DemoResult:
    published: int
    hot_leads: int
    webhooks_delivered: int
    sla_breaches: int
    expected_sla_misses: list[str]
    breaches_by_sla: dict[str, int]  # hot_lead_follow_up, rejection_feedback
    report_path: Path
    reports: dict[str, Any]
    period: Period  # what the reports cover: report_period()


SEEDS_FILE = "demo-seeds.json"  # the traffic seeds whose data the directory holds
DEFAULT_SEED = 7


def _seeds_used(data: Path) -> set[int]:
    """Seeds of earlier demos in ``data``. A directory from before this file existed has a manifest.json
    naming its last seed."""
    seeds: set[int] = set()
    for name, read in ((SEEDS_FILE, lambda d: d), ("manifest.json", lambda d: [d.get("seed")])):
        try:
            found = read(json.loads((data / name).read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        seeds |= {int(s) for s in found if isinstance(s, int)}
    return seeds


def _record_seed(data: Path, plan: TrafficPlan) -> None:
    """Mark the plan's seed as used, and write its manifest, just before its first event is sent: a demo
    that failed to start (a port held by something else) recorded it too, so the next run said the
    directory held that seed's traffic, took the next seed and refused ``--seed`` for it."""
    (data / SEEDS_FILE).write_text(json.dumps(sorted({*_seeds_used(data), plan.seed})))
    (data / "manifest.json").write_text(json.dumps(plan.manifest(), indent=1))


def choose_seed(data: Path, seed: int | None, console: Console) -> int:
    """The traffic seed for a demo in ``data``: the one asked for, unless the directory already holds its
    traffic (an error); by default 7, or the next seed the directory has no traffic of (with a note)."""
    used = _seeds_used(data)
    if seed is None:  # the default: 7, or the next seed this directory has no data of
        seed = next(n for n in itertools.count(DEFAULT_SEED) if n not in used)
        if seed != DEFAULT_SEED:
            console.print(
                f"{data} holds earlier demo traffic (seeds {', '.join(map(str, sorted(used)))}): adding seed "
                f"{seed}, so no event id repeats (--reset starts fresh)"
            )
    if seed in used:
        raise DemoUsageError(
            f"{data} already holds the demo traffic of seed {seed}: the same seed makes the same event ids, "
            "here with other times and contents, so the stored history would mix two datasets under one id. "
            "Run with --reset to start fresh, or with another --seed to add a second dataset "
            f"(seeds used here: {', '.join(map(str, sorted(used)))})"
        )
    return seed


def run_demo(
    settings: Settings,
    *,
    duration_s: float | None,
    rate: float,
    leads: int | None,
    seed: int | None,
    reset: bool,
    live: bool,
    console: Console,
    via: str = "sdk",
) -> DemoResult:
    data = settings.data_dir.resolve()
    if reset and data.exists():
        shutil.rmtree(data)
    seed = choose_seed(data, seed, console)
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if leads is None:  # about 11 events per lead: size the plan to what the duration can stream
        leads = max(50, int(rate * duration_s / 11)) if duration_s else 1000
    now = int(time.time() * 1000)
    with console.status("planning synthetic traffic"):
        plan = plan_traffic(seed, leads, start_ms=now - 72 * HOUR_MS, span_ms=72 * HOUR_MS)
    catalogue = data / "content.csv"
    write_catalogue(plan.catalogue, catalogue)
    console.print(
        f"planned {len(plan.events):,} events for {leads:,} leads "
        f"({len(plan.hot_leads)} will become hot, {len(plan.sla_misses)} will miss their SLA)"
    )
    with running_broker(settings, log_file=logs / "tansu.log") as bootstrap:
        return _run(settings, bootstrap, plan, catalogue, logs, duration_s, rate, live, console, via)


def _run(
    settings: Settings,
    bootstrap: str,
    plan: TrafficPlan,
    catalogue: Path,
    logs: Path,
    duration_s: float | None,
    rate: float,
    live: bool,
    console: Console,
    via: str = "sdk",
) -> DemoResult:
    secret = secrets.token_hex(16)
    receiver = WebhookReceiver(secret)
    hook_url = receiver.start()
    worker = Service("worker", ["worker"], port_or_free(settings.web_port), logs / "worker.log")
    sink = Service("sink", ["sink"], port_or_free(settings.sink_port), logs / "sink.log")
    collector = Service(
        "collector", ["collector"], port_or_free(settings.collector_port), logs / "collector.log"
    )
    notifier = Service("notifier", ["notifier", "--ops-port", str(free_port())], 0, logs / "notifier.log")
    notifier.port = int(notifier.args[-1])
    keys = {"demo-site": secrets.token_hex(8), "crm-demo": secrets.token_hex(8)}
    env = _env(settings, bootstrap, worker.port, sink.port, collector.port, hook_url, secret, keys)
    loaded = subprocess.run(
        [sys.executable, "-m", "leadpulse.cli", "content", "load", str(catalogue)],
        env=env,
        capture_output=True,
        text=True,
    )
    if loaded.returncode != 0:
        raise DemoError(f"content load failed: {loaded.stdout}{loaded.stderr}")
    services = [worker, sink, collector, notifier]
    feed = HotLeadFeed(settings.model_copy(update={"kafka_bootstrap": bootstrap}))
    state = LiveState()
    try:
        with _steps(console, "starting worker, sink, collector and notifier", len(services)) as advance:
            for service in services:
                service.start(env)
            for service in services:
                service.wait_ready()
                advance()
        console.print(f"worker {worker.url} · sink {sink.url} · collector {collector.url} · logs in {logs}")
        feed.start()
        client = (
            CollectorClient(collector.url, keys["demo-site"], keys["crm-demo"])
            if via == "collector"
            else None
        )
        publisher = _Publisher(settings, bootstrap, plan, rate, duration_s, client)
        _record_seed(logs.parent, plan)
        publisher.start()
        refresh = _refresher(state, feed, receiver, publisher, worker, sink, notifier)
        if live:
            with Live(render(state, feed), console=console, refresh_per_second=2) as view:
                _drive(state, publisher, plan, refresh, lambda: view.update(render(state, feed)))
        else:
            _drive(state, publisher, plan, refresh, lambda: console.print(_status_line(state, feed)))
        if publisher.error:
            raise DemoError(f"publishing failed: {publisher.error}")
        period = report_period(int(time.time() * 1000))
        local = settings.model_copy(update={"kafka_bootstrap": bootstrap, "sink_port": sink.port})
        reports = _reports(local, period)
    finally:
        feed.stop()
        for service in reversed(services):
            service.stop()
        receiver.stop()
    return DemoResult(
        publisher.sent,
        feed.count,
        len(receiver.keys),
        int(total(state.worker, "leadpulse_sla_events_total", level="breach")),
        sorted(plan.sla_misses),
        {
            sla: int(total(state.worker, "leadpulse_sla_events_total", sla=sla, level="breach"))
            for sla in (FOLLOW_UP, REJECTION_FEEDBACK)
        },
        settings.data_dir / "report.html",
        reports,
        period,
    )


def _env(
    settings: Settings,
    bootstrap: str,
    web: int,
    sink: int,
    collector: int,
    hook: str,
    secret: str,
    keys: dict[str, str],
) -> dict[str, str]:
    from streams.settings import environ_without_settings

    env = environ_without_settings()
    env.update(
        {
            "LEADPULSE_KAFKA_BOOTSTRAP": bootstrap,
            "LEADPULSE_TOPIC_PREFIX": settings.topic_prefix,
            "LEADPULSE_DATA_DIR": str(settings.data_dir.resolve()),
            "LEADPULSE_WEB_PORT": str(web),
            "LEADPULSE_SINK_PORT": str(sink),
            "LEADPULSE_COLLECTOR_PORT": str(collector),
            "LEADPULSE_WEBHOOK_URLS": json.dumps([hook]),
            "LEADPULSE_WEBHOOK_SECRET": secret,
            "LEADPULSE_WRITE_KEYS": json.dumps(keys),
            "LEADPULSE_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.clickhouse_dsn:
        env["LEADPULSE_CLICKHOUSE_DSN"] = settings.clickhouse_dsn
    return env


class _Publisher(threading.Thread):
    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        plan: TrafficPlan,
        rate: float,
        duration_s: float | None,
        collector: CollectorClient | None = None,
    ) -> None:
        super().__init__(name="publisher", daemon=True)
        self.settings, self.bootstrap, self.plan = settings, bootstrap, plan
        self.rate, self.duration_s, self.collector = rate, duration_s, collector
        self.sent = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            if self.collector is not None:  # the way a web site and a CRM integration would send
                with self.collector as client:

                    def post(schema: str, record: dict[str, Any]) -> None:
                        client.send(schema, record)
                        self.sent += 1

                    publish(self.plan, post, rate=self.rate, duration_s=self.duration_s)
                return
            with Producer(self.settings, bootstrap=self.bootstrap) as producer:

                def send(schema: str, record: dict[str, Any]) -> None:
                    producer.send(schema, record, validate=False)
                    self.sent += 1

                publish(self.plan, send, rate=self.rate, duration_s=self.duration_s)
        except Exception as exc:  # surfaced by the demo as a DemoError
            self.error = f"{type(exc).__name__}: {exc}"


def _refresher(
    state: LiveState,
    feed: HotLeadFeed,
    receiver: WebhookReceiver,
    publisher: _Publisher,
    worker: Service,
    sink: Service,
    notifier: Service,
) -> Callable[[], None]:
    last = [time.monotonic(), 0.0, 0.0]

    def refresh() -> None:
        state.published = publisher.sent
        state.worker = scrape(worker.url + "/metrics") or state.worker
        state.sink = scrape(sink.url + "/metrics") or state.sink
        state.webhook_received = len(receiver.keys)
        inputs, consumed = scored(state.worker), total(state.worker, "leadpulse_events_consumed_total")
        now = time.monotonic()
        state.rate = (inputs - last[1]) / max(now - last[0], 1e-6)
        state.busy = consumed > last[2]
        last[:] = [now, inputs, consumed]

    return refresh


def _drive(
    state: LiveState,
    publisher: _Publisher,
    plan: TrafficPlan,
    refresh: Callable[[], None],
    show: Callable[[], None],
) -> None:
    """Stream until the publisher is done, then settle: scored, SLA timers fired, sink caught up."""
    while publisher.is_alive():
        refresh()
        show()
        time.sleep(1.0)
    state.phase = "settling"
    deadline = time.monotonic() + 90
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        refresh()
        show()
        breaches = total(state.worker, "leadpulse_sla_events_total", sla="hot_lead_follow_up", level="breach")
        lag = total(state.sink, "leadpulse_consumer_lag")
        if state.busy or lag > 0 or breaches < len(plan.sla_misses):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 3:
            break
    state.phase = "done"
    show()


def _status_line(state: LiveState, feed: HotLeadFeed) -> str:
    w = state.worker
    return (
        f"[{state.phase}] published {state.published:,} · scored "
        f"{scored(w):,.0f} · hot {feed.count} · webhooks "
        f"{state.webhook_received} · SLA breaches "
        f"{total(w, 'leadpulse_sla_events_total', level='breach'):,.0f} · stored "
        f"{total(state.sink, 'leadpulse_sink_rows_total'):,.0f}"
    )


def report_period(now_ms: int) -> Period:
    """The period of the demo's reports: the one ``leadpulse report`` reads with no --since/--until (the last
    90 days). The demo read 30, so once the data directory held an earlier demo's traffic older than that,
    the command it suggests next (``leadpulse report funnel``) printed other numbers than the demo had."""
    return make_period(None, None, now_ms)


def _reports(settings: Settings, period: Period) -> dict[str, Any]:
    from sinks.query_service import query_runner
    from sinks.reports.content import content_report
    from sinks.reports.funnel import funnel_report
    from sinks.reports.health import health_report
    from sinks.reports.plan import plan_report
    from sinks.reports.sla import sla_report

    run, close = query_runner(settings)
    reports: dict[str, Callable[[], Any]] = {
        "content": lambda: content_report(run, period),
        "health": lambda: health_report(run, period),
        "funnel": lambda: funnel_report(run, period),
        "sla": lambda: sla_report(run, period),
        # The Model's worked example (reference/the-model-process): 10M revenue, 1M per deal
        "plan": lambda: plan_report(run, period, target_revenue=10_000_000, average_deal=1_000_000),
    }
    done: dict[str, Any] = {}
    try:
        with _steps(Console(stderr=True), "building the reports", len(reports)) as advance:
            for name, build in reports.items():
                done[name] = build()
                advance()
        return done
    finally:
        close()


@contextlib.contextmanager
def _steps(console: Console, what: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar for a step made of ``total`` parts (transient: gone once done)."""
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(what, total=total)
        yield lambda: progress.advance(task)
