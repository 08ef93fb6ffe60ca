"""The three operations endpoints every leadpulse process serves: ``/metrics``, ``/health``, ``/ready``.

Why one helper: the worker (Faust already runs aiohttp), the sink and the collector must answer probes the
same way, or Kubernetes manifests and Prometheus scrape configs would need a case per component.

- ``/health`` (liveness): the event loop answers, so the process is alive. It never looks at Kafka or
  ClickHouse: restarting a pod because the broker is down only adds a rebalance to the outage.
- ``/ready`` (readiness): asks the process' own ``ready()`` callable, typically "partitions assigned and
  state recovered" for a worker, "ClickHouse reachable and partitions assigned" for a sink. 200 with the
  detail when ready, 503 with the detail otherwise, so ``curl`` says *why* a pod is not ready.
- ``/metrics``: the process' registry in the Prometheus text format (or OpenMetrics when asked).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

ReadyCheck = Callable[[], tuple[bool, dict[str, Any]]]


def _json(status: int, body: dict[str, Any]) -> web.Response:
    # default=str: a readiness detail may hold sets, paths or datetimes; the probe must still answer.
    return web.Response(
        status=status, text=json.dumps(body, default=str, sort_keys=True), content_type="application/json"
    )


def add_ops_routes(app: web.Application, registry: CollectorRegistry, ready: ReadyCheck) -> None:
    """Add ``GET /metrics``, ``/health`` and ``/ready`` to an existing aiohttp application."""

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    async def health(request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readiness(request: web.Request) -> web.Response:
        try:
            is_ready, detail = ready()
        except Exception as exc:
            # A check that crashes means "not ready", never a 500 that a probe reads the same way anyway
            # but a human reads as a bug in the endpoint.
            error = f"readiness check raised {type(exc).__name__}: {exc}"
            return _json(503, {"ready": False, "error": error})
        return _json(200 if is_ready else 503, {"ready": bool(is_ready), **detail})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", readiness)


class PortInUse(OSError):
    """A process's HTTP port cannot be bound; the message names it and the setting that moves it. The CLI
    prints it as one line (``leadpulse.cli.main``)."""


async def start_ops_server(
    host: str, port: int, registry: CollectorRegistry, ready: ReadyCheck
) -> web.AppRunner:
    """Serve the ops endpoints on ``host:port`` for a process that runs no aiohttp app of its own.

    Returns the started runner: ``await runner.cleanup()`` stops it. With ``port=0`` the OS picks a free
    port; read it from ``bound_port(runner)``.
    """
    app = web.Application()
    add_ops_routes(app, registry, ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise PortInUse(f"cannot serve ops endpoints on {host}:{port}: {exc.strerror}") from exc
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner listens on (useful after ``port=0``)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("ops server is not listening on a TCP port; was start_ops_server awaited?")
