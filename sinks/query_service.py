"""Read-only SQL for ``leadpulse sql`` and ``leadpulse report``, wherever the data lives.

Why a service: an embedded chDB directory is owned by one process (a second open fails with "Cannot lock
file .../status"). So in embedded mode the sink, which owns the engine, answers read-only queries over HTTP
(``POST /query`` on ``settings.sink_port``); with no sink running, the CLI opens the directory itself; with
a server DSN every command talks to the server directly. Callers see one function, ``query_runner``.

Read-only is enforced twice: ``sinks.sql_guard`` lets through one reading statement of the leadpulse tables
(checked again on ClickHouse's own parse here), and it runs with ``readonly=2`` (ClickHouse refuses writes
and DDL, yet the client may still pass per-query settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import json
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from sinks.clickhouse import MEMORY_DSN, EmbeddedEngineBusy, chdb_location, get_client, holds_nothing
from sinks.reports import Rows
from sinks.sql_guard import QueryError as QueryError  # re-exported: callers catch it from here
from sinks.sql_guard import check_read_only as check_read_only
from sinks.sql_guard import code_of, reads_outside, refuse_outside_reader
from streams.settings import Settings
from streams.web import PortInUse

READ_ONLY_SETTINGS = {"readonly": 2}


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def section(self) -> Rows:
        """The rows as a report section that keeps its columns when empty."""
        return Rows(self.dicts(), self.columns)


Runner = Callable[[str, Mapping[str, Any] | None], QueryResult]


_AST_FUNCTION = re.compile(r"^\s*Function (\w+)", re.M)


def parsed_outside_reader(
    client: Client, guard: threading.Lock, statement: str, parameters: Mapping[str, Any] | None
) -> str | None:
    """The first outside reader in the statement as ClickHouse parses it (``EXPLAIN AST``, nothing runs).
    Why beside ``check_read_only``: its lexer once misread quoting (sinks/sql_guard.py) and a file was
    read; ClickHouse's parser is the one that runs the query. None if it does not parse: running it says
    why."""
    try:
        with guard:
            ast = client.query(
                f"EXPLAIN AST {statement}", parameters=dict(parameters or {}), settings=READ_ONLY_SETTINGS
            )
    except DatabaseError:
        return None
    names = (name for row in ast.result_rows for name in _AST_FUNCTION.findall(str(row[0])))
    return next((str(name) for name in names if reads_outside(name)), None)


def jsonable(value: Any) -> Any:
    """Plain JSON values, the same whether a result came over HTTP or from a local client."""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


#: ClickHouse error names of a database or table that does not exist (a fresh data directory).
MISSING_SCHEMA = ("UNKNOWN_DATABASE", "UNKNOWN_TABLE")
# A misspelt table among existing ones gets their names, not "run migrate" (black-box audit).
LEADPULSE_TABLES = (
    "SELECT name FROM system.tables WHERE database = 'leadpulse' AND name NOT LIKE '.%' ORDER BY name"
)


def client_runner(client: Client, lock: threading.Lock | None = None) -> Runner:
    """Run read-only queries on an open client (the sink's own, a test's, or a server connection)."""
    guard = lock or threading.Lock()

    def run(sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        statement = check_read_only(sql)
        reader = parsed_outside_reader(client, guard, statement, parameters)
        if reader is not None:
            raise refuse_outside_reader(reader)
        try:
            with guard:
                result = client.query(
                    statement, parameters=dict(parameters or {}), settings=READ_ONLY_SETTINGS
                )
        except DatabaseError as exc:
            missing = next((code for code in MISSING_SCHEMA if code in str(exc)), None)
            if missing is None:
                raise
            with guard:
                tables = [row[0] for row in client.query(LEADPULSE_TABLES).result_rows]
            hint = (
                f"the leadpulse tables are: {', '.join(tables)}"
                if tables
                else "No leadpulse tables here yet: `leadpulse migrate` creates them, and `leadpulse sink` "
                "(or `leadpulse demo`) fills them"
            )
            raise QueryError(f"{missing}: {str(exc).splitlines()[0][:300]}. {hint}") from None
        columns = list(result.column_names)
        if not columns and not result.result_rows:
            columns = described_columns(client, guard, statement, parameters)
        return QueryResult(columns, [[jsonable(v) for v in row] for row in result.result_rows])

    return run


def described_columns(
    client: Client, guard: threading.Lock, statement: str, parameters: Mapping[str, Any] | None
) -> list[str]:
    """The columns of a query that returned no rows: chDB (clickhouse-connect 1.12) names none, so an empty
    section or `leadpulse sql` answer had no header; ``DESCRIBE (query)`` names them. SELECT/WITH only
    (DESCRIBE takes no SHOW or EXISTS); [] if it fails."""
    if code_of(statement).lstrip().split(None, 1)[0].upper() not in ("SELECT", "WITH"):
        return []
    try:
        with guard:
            described = client.query(
                f"DESCRIBE ({statement})", parameters=dict(parameters or {}), settings=READ_ONLY_SETTINGS
            )
    except DatabaseError:
        return []
    return [str(row[0]) for row in described.result_rows]


# --- server side: the routes the sink serves ------------------------------------------------------------
def embedded_path(settings: Settings) -> str:
    """The chDB directory a DSN names, absolute: how a CLI and a sink tell they mean the same engine."""
    return str(Path(settings.dsn.removeprefix("chdb://")).resolve())


def add_query_routes(app: web.Application, runner: Runner, owns: str) -> None:
    """``POST /query`` runs a read-only query; ``GET /query`` says which chDB directory this sink owns."""

    async def owner(request: web.Request) -> web.Response:
        return web.json_response({"owns": owns})

    async def query(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            sql, parameters = body["sql"], body.get("parameters") or {}
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"error": 'expected a JSON body {"sql": "...", "parameters": {...}}'}, status=400
            )
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, runner, sql, parameters)
        except QueryError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except Exception as exc:
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=400)
        return web.json_response({"columns": result.columns, "rows": result.rows})

    app.router.add_post("/query", query)
    app.router.add_get("/query", owner)


class HttpThread:
    """An aiohttp application served from its own thread and event loop (the sink loop is synchronous)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="sink-http", daemon=True)

    def start(self) -> HttpThread:
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise PortInUse(
                f"cannot serve the sink API on {self.host}:{self.port} "
                f"(set LEADPULSE_SINK_PORT): {self._error}"
            ) from self._error
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._runner = web.AppRunner(self.app, access_log=None)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self.loop.run_until_complete(site.start())
            for address in self._runner.addresses:
                if isinstance(address, tuple):
                    self.port = int(address[1])
        except BaseException as exc:
            self._error = exc
            # Close the loop here: left to the garbage collector at exit, its self-pipe could already be
            # closed, and "Exception ignored in BaseEventLoop.__del__" printed a traceback after the
            # one-line error (seen once in CI, test_port_in_use).
            if self._runner is not None:
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# --- client side: what `leadpulse sql` / `report` call --------------------------------------------------
def http_runner(base_url: str, timeout: float = 120.0) -> Runner:
    def run(sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        check_read_only(sql)
        data = json.dumps({"sql": sql, "parameters": dict(parameters or {})}, default=str).encode()
        request = urllib.request.Request(
            f"{base_url}/query", data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
            except ValueError:
                detail = f"HTTP {exc.code} {exc.reason}"
            raise QueryError(f"query refused by the sink at {base_url}: {detail}") from None
        except (OSError, ValueError) as exc:  # refused, reset (the sink stopped), timed out; not JSON
            raise QueryError(
                f"no answer from the sink at {base_url} ({type(exc).__name__}: {exc}); is it still running?"
            ) from None
        return QueryResult(body["columns"], body["rows"])

    return run


def sink_url(settings: Settings) -> str:
    return f"http://{settings.web_host}:{settings.sink_port}"


def sink_serving(settings: Settings, timeout: float = 1.0) -> bool:
    """Whether a sink on the configured port serves queries for *this* chDB directory (never for a server
    DSN: every command talks to a server itself). A sink of another data directory (another
    LEADPULSE_DATA_DIR on the default port) must not answer for it: its numbers would be another dataset's,
    and a ``forget`` sent to it would erase nothing here."""
    if not settings.embedded_clickhouse:
        return False
    try:
        with urllib.request.urlopen(f"{sink_url(settings)}/query", timeout=timeout) as response:
            owns = json.loads(response.read()).get("owns")
    except (OSError, urllib.error.URLError, ValueError, AttributeError):
        return False
    return bool(owns == embedded_path(settings))


def query_runner(settings: Settings) -> tuple[Runner, Callable[[], None]]:
    """A runner for the configured ClickHouse and a ``close`` callable.

    Server DSN → direct client. Embedded → the running sink's query API, else the directory opened here.
    """
    if sink_serving(settings):
        return http_runner(sink_url(settings)), lambda: None
    dsn = settings.dsn
    if settings.embedded_clickhouse and holds_nothing(chdb_location(dsn)):
        # An engine in memory answers as the empty directory would (no leadpulse database; SELECT 1 runs)
        # without creating it, as opening it would: a read-only command leaves nothing behind.
        dsn = MEMORY_DSN
    try:
        client = get_client(settings, dsn=dsn)
    except Exception as exc:
        if isinstance(exc, EmbeddedEngineBusy):
            # Not "run `leadpulse sink`": a sink cannot open a directory another process holds either.
            raise QueryError(
                f"{settings.shown_dsn} is locked by another process that does not serve queries on "
                f"{sink_url(settings)}: a `leadpulse sink` listening on another port (set "
                "LEADPULSE_SINK_PORT to its port), one still starting (try again when it is ready), or "
                "another command using the directory (wait for it to end)"
            ) from None
        where = settings.shown_dsn
        raise QueryError(f"cannot open ClickHouse at {where}: {type(exc).__name__}: {exc}") from None
    return client_runner(client), client.close
