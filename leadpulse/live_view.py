"""The demo's terminal output: the live view (process metrics scraped from /metrics, hot leads read from the
topic), the reports it prints at the end, and its closing lines.

Kept apart from the orchestration so the view can be reused (e.g. a future ``leadpulse top``).
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agents.stages import STAGES, is_forward
from schemas.errors import SchemaError
from schemas.registry import default_registry
from streams.broker import kafka_client_config
from streams.settings import Settings
from streams.topics import INPUTS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout: float = 2.0) -> Samples:
    """Every sample of a /metrics page; empty when the process does not answer (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lbls), v in samples.items()
        if n == name and all(dict(lbls).get(k) == want for k, want in labels.items())
    )


INPUT_TOPICS = frozenset(t.name for t in INPUTS)  # catalogue names: the metric's topic label has no prefix


def scored(worker: Samples) -> float:
    """Input events the worker has read, comparable with what the demo published. The metric also counts the
    worker's internal hops (events forwarded to their lead, scores re-keyed by account): summed over every
    topic, a default demo showed "published 10,579 · scored 23,380"."""
    return sum(total(worker, "leadpulse_events_consumed_total", topic=topic) for topic in INPUT_TOPICS)


def recycles(worker: Samples) -> float:
    """Leads moved back to nurturing (a rejection, a lost deal, a timed recycle), as the funnel report's
    ``recycles`` counts them. A lead's first move into nurturing (lead -> nurturing) is no recycle: counting
    every entry showed ~5x the report's number."""
    back = [stage for stage in STAGES if stage != "nurturing" and not is_forward(stage, "nurturing")]
    return sum(
        total(worker, "leadpulse_stage_transitions_total", from_stage=stage, to_stage="nurturing")
        for stage in back
    )


@dataclass
class HotLeadFeed:
    """Follows ``leads.hot`` in a background thread, keeping the newest notifications for display."""

    settings: Settings
    keep: int = 8
    recent: deque[dict[str, Any]] = field(default_factory=deque)
    count: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> HotLeadFeed:
        self._thread = threading.Thread(target=self._run, name="hot-lead-feed", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        registry = default_registry()
        consumer = KafkaConsumer(
            self.settings.topic("leads.hot"),
            bootstrap_servers=self.settings.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            **kafka_client_config(self.settings),
        )
        seen: set[str] = set()
        try:
            while not self._stop.is_set():
                for messages in consumer.poll(timeout_ms=300).values():
                    for message in messages:
                        try:
                            record = registry.decode(message.value or b"")[1]
                        except SchemaError:
                            continue
                        if record["notification_id"] in seen:  # at-least-once: drop replays by id
                            continue
                        seen.add(record["notification_id"])
                        self.count += 1
                        self.recent.appendleft(record)
                        while len(self.recent) > self.keep:
                            self.recent.pop()
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)


@dataclass
class LiveState:
    started: float = field(default_factory=time.monotonic)
    published: int = 0
    worker: Samples = field(default_factory=dict)
    sink: Samples = field(default_factory=dict)
    notifier: Samples = field(default_factory=dict)
    webhook_received: int = 0
    rate: float = 0.0  # input events/s scored by the worker, over the last refresh
    busy: bool = False  # the worker read records (internal hops included) since the last refresh
    phase: str = "streaming"


def render(state: LiveState, feed: HotLeadFeed) -> Group:
    w, s = state.worker, state.sink
    stats = Table.grid(padding=(0, 3))
    stats.add_row(
        f"[bold]{state.phase}[/] {time.monotonic() - state.started:5.0f} s",
        f"published [cyan]{state.published:,}[/]",
        f"scored [cyan]{scored(w):,.0f}[/] ({state.rate:,.0f}/s)",
        f"stored [cyan]{total(s, 'leadpulse_sink_rows_total'):,.0f}[/] rows",
        f"sink lag [cyan]{total(s, 'leadpulse_consumer_lag'):,.0f}[/]",
    )
    stages = Table("stage", "entered", box=None, pad_edge=False)
    for stage in ("lead", "nurturing", "mql", "sal", "opportunity", "customer", "expansion", "disqualified"):
        stages.add_row(stage, f"{total(w, 'leadpulse_stage_transitions_total', to_stage=stage):,.0f}")
    sla = Table("SLA", "warnings", "breaches", box=None, pad_edge=False)
    for name in ("hot_lead_follow_up", "rejection_feedback"):
        sla.add_row(
            name,
            f"{total(w, 'leadpulse_sla_events_total', sla=name, level='warning'):,.0f}",
            f"[red]{total(w, 'leadpulse_sla_events_total', sla=name, level='breach'):,.0f}[/]",
        )
    hot = Table("hot lead", "score", "company", "why (top signals)", box=None, pad_edge=False)
    for record in feed.recent:
        why = ", ".join(f"{sig['rule']} +{sig['points']:.0f}" for sig in record["signals"][:3])
        # Text, not markup: a lead id or company name such as "[/x]" (anyone may send one) crashed the view
        company = Text(str(record.get("company_name") or ""))
        hot.add_row(Text(record["lead_id"]), f"{record['score']:.0f}", company, Text(why))
    side = Table.grid(padding=(0, 4))
    side.add_row(stages, sla)
    title = (
        f"hot leads: {feed.count:,} · webhooks delivered: {state.webhook_received:,} · "
        f"recycled to nurturing: {recycles(w):,.0f}"
    )
    return Group(Panel(stats, title="leadpulse demo"), side, Panel(hot, title=title))


#: What the demo prints of a report section in the terminal, where a section is wider than 80 columns: the
#: columns that answer its question. The content report is ~200 characters a row and its SLA sections ~150,
#: so a terminal wrapped each row over two or three lines. ``leadpulse report NAME`` and the HTML report
#: have every column; the demo says so under each report it trimmed.
TERMINAL_COLUMNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("content", "content"): ("content_id", "funnel_stage", "unique_leads", "influenced_leads", "lift"),
    ("sla", "follow_up"): (
        "mqls",
        "followed_up",
        "own_sla_compliance",
        "compliance",
        "p50_hours",
        "p90_hours",
    ),
    ("sla", "owner_compliance"): ("owner", "hot_leads", "within_own_sla", "own_sla_compliance", "breaches"),
}
TERMINAL_ROWS = {("content", "content"): 10}  # the report lists items by influenced leads, most first

Sections = Mapping[str, Sequence[Mapping[str, Any]]]


def terminal_report(name: str, sections: Sections) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """The sections of report ``name`` as the demo prints them, and the note to print under them when
    columns or rows were left out (None when nothing was)."""
    shown: dict[str, list[dict[str, Any]]] = {}
    left_out: set[str] = set()
    for section, rows in sections.items():
        columns = TERMINAL_COLUMNS.get((name, section))
        limit = TERMINAL_ROWS.get((name, section), len(rows))
        kept = [dict(row) for row in rows[:limit]]
        if columns is not None:
            kept = [{c: row.get(c) for c in columns} for row in kept]
            left_out.add("columns")
        if limit < len(rows):
            left_out.add("rows")
        shown[section] = kept
    if not left_out:
        return shown, None
    what = " and ".join(sorted(left_out))
    return shown, f"(some {what} left out here: `leadpulse report {name}` and the HTML report have them all)"


def next_steps(data: Path, cwd: Path, argv0: str, on_path: str | None, dsn: str | None = None) -> str:
    """The demo's last lines: where its data is and the commands that read it, as this user can type them.

    ``bash run.sh demo`` runs ``.venv/bin/leadpulse`` inside the repository, so a bare ``leadpulse`` is often
    not on the PATH, and the default data directory ``.leadpulse`` is relative to the directory the demo ran
    in: "try `leadpulse report content`" failed with "command not found", or read an empty directory
    elsewhere. ``on_path`` is what ``shutil.which("leadpulse")`` found; ``dsn`` the (shown) ClickHouse DSN
    when LEADPULSE_CLICKHOUSE_DSN is set: the data is there, not under ``data``, which it overrides."""
    exe, script = "leadpulse", cwd / argv0  # an absolute argv0 stays itself
    if script.name == "leadpulse" and script.exists():
        same = on_path is not None and Path(on_path).resolve() == script.resolve()
        exe = "leadpulse" if same else argv0
    data = data.resolve()
    default = data == (cwd / ".leadpulse").resolve()
    cmd = exe if default or dsn else f"LEADPULSE_DATA_DIR={data} {exe}"
    where = f"data kept in {data}" if dsn is None else f"data stored in {dsn}"
    return (
        f"{where}. Next, from {cwd}{' with the same LEADPULSE_CLICKHOUSE_DSN' if dsn else ''}:\n"
        f"  {cmd} report funnel      # also content, health, sla; plan --target 10M --deal-size 1M\n"
        f'  {cmd} sql "SELECT count() FROM leadpulse.events"'
    )
