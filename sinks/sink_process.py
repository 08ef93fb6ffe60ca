"""The sink as a process: wait for ClickHouse and migrate it, serve the ops endpoints (and, embedded, the
query API) from the start, then run ``ClickHouseSinkLoop`` until stopped (``leadpulse sink``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from clickhouse_connect.driver.client import Client

from sinks.batch import BatchPolicy
from sinks.clickhouse import EmbeddedDirectoryUnusable, EmbeddedEngineBusy
from sinks.sink_hooks import UNAVAILABLE_TABLE, MetricsHooks
from sinks.sink_loop import ClickHouseSinkLoop, SinkStats
from streams.backoff import Backoff
from streams.settings import Settings

log = logging.getLogger(__name__)


def _connect(
    settings: Settings,
    stop_event: threading.Event,
    get_client: Callable[[Settings], Client],
    migrate: Callable[[Client], Any],
    on_failure: Callable[[], None] | None = None,
) -> Client | None:
    """Open and migrate ClickHouse, retrying with backoff while it is unreachable; ``on_failure`` is called
    for each failed attempt.

    Why not exit: a sink that dies when ClickHouse is away is restarted in a loop by its supervisor and
    floods the logs; nothing is consumed (so nothing committed) until ClickHouse answers, then it resumes
    from the committed offsets."""
    backoff = Backoff(1.0, 30.0)
    while not stop_event.is_set():
        try:
            client = get_client(settings)
            migrate(client)
            return client
        except Exception as exc:  # connection refused, DNS, auth, a server starting up: all retried
            if isinstance(exc, EmbeddedEngineBusy | EmbeddedDirectoryUnusable):  # not transient
                raise
            if on_failure is not None:
                on_failure()
            first_line = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            delay = backoff.next()
            log.warning(
                "ClickHouse at %s unavailable (%s: %s); retrying in %.0f s",
                settings.shown_dsn,
                type(exc).__name__,
                first_line,
                delay,
            )
            stop_event.wait(delay)
    return None


def run_sink(
    settings: Settings,
    stop_event: threading.Event,
    *,
    policy: BatchPolicy | None = None,
    metrics: Any = None,
    serve: bool = True,
    client: Client | None = None,
    on_started: Callable[[ClickHouseSinkLoop], None] | None = None,
) -> SinkStats:
    """Run the sink until ``stop_event`` is set: migrate, consume, insert, commit; serve ``/metrics``,
    ``/health``, ``/ready`` and (embedded ClickHouse) the read-only query API on ``settings.sink_port``."""
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from sinks.catalogue_service import add_catalogue_route
    from sinks.clickhouse import get_client
    from sinks.content_catalogue import load_entries
    from sinks.migrate import migrate
    from sinks.query_service import (
        HttpThread,
        QueryError,
        QueryResult,
        add_query_routes,
        client_runner,
        embedded_path,
    )
    from streams.metrics import Metrics
    from streams.web import add_ops_routes

    if metrics is None:
        metrics = Metrics(CollectorRegistry(), component="sink", process_metrics=True)
    if settings.default_email_hash_key and not settings.embedded_clickhouse:
        log.warning(
            "LEADPULSE_EMAIL_HASH_KEY is the shipped default: anyone with a list of emails can match the "
            "stored email hashes; set a random key before storing real data (docs/privacy.md)"
        )
    # Served from the start, so a sink waiting for ClickHouse answers /health and /metrics and says on /ready
    # what it waits for (an orchestrator probing a silent port restarts it in a loop).
    running: dict[str, Any] = {}

    def ready() -> tuple[bool, dict[str, Any]]:
        sink: ClickHouseSinkLoop | None = running.get("loop")
        if sink is None:
            return False, {"waiting_for": f"ClickHouse at {settings.shown_dsn}"}
        ok = bool(sink.stats.assigned) and sink.retry_at is None
        return ok, {
            "assigned_partitions": len(sink.stats.assigned),
            "backing_off": sink.retry_at is not None,
            "last_success": sink.stats.last_success,
        }

    def query(sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        runner = running.get("query")
        if runner is None:
            raise QueryError("the sink is still waiting for ClickHouse; try again when /ready says ready")
        result: QueryResult = runner(sql, parameters)
        return result

    def load_content(entries: list[dict[str, Any]], source: str) -> int:
        loader = running.get("content")
        if loader is None:
            raise QueryError("the sink is still waiting for ClickHouse; try again when /ready says ready")
        return int(loader(entries, source))

    http: HttpThread | None = None
    if serve:
        app = web.Application()
        add_ops_routes(app, metrics.registry, ready)
        if settings.embedded_clickhouse:
            add_query_routes(app, query, embedded_path(settings))
            add_catalogue_route(app, load_content)
        http = HttpThread(app, settings.web_host, settings.sink_port).start()
    own_client = client is None
    query_client: Client | None = None
    try:
        if client is None:
            # Each failed attempt counts as a failure of kind "unavailable" (table="all"): before, a sink that
            # could not reach ClickHouse at start exported no failure, no lag and last_success 0, so no alert
            # could fire (found by an ops audit); now LeadpulseSinkFailing does.
            unavailable = metrics.sink_failures.labels(table=UNAVAILABLE_TABLE, kind="unavailable")
            client = _connect(settings, stop_event, get_client, migrate, on_failure=unavailable.inc)
            if client is None:  # stopped while ClickHouse was still unreachable
                return SinkStats()
        else:
            migrate(client)
        loop = ClickHouseSinkLoop(settings, client, policy=policy, hooks=MetricsHooks(metrics))
        if serve and settings.embedded_clickhouse:
            query_client = get_client(settings)  # a second handle on the same engine, with its own lock
            guard = threading.Lock()  # queries and catalogue loads share the handle, one at a time
            running["query"] = client_runner(query_client, guard)

            def load(entries: list[dict[str, Any]], source: str, handle: Client = query_client) -> int:
                with guard:
                    return load_entries(handle, entries, source)

            running["content"] = load
        running["loop"] = loop
        if on_started is not None:
            on_started(loop)
        return loop.run(stop_event)
    finally:
        if http is not None:
            http.stop()
        if query_client is not None:
            query_client.close()
        if own_client and client is not None:
            client.close()
