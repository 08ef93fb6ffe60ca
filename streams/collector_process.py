"""The ``leadpulse collector`` process: serve the collector until SIGINT/SIGTERM, waiting for the broker.

Why apart from ``streams/collector.py``: that module is the request path (``Collector``, ``serve``, used by
the tests and the bench as they are); this one is the process around it: signals, the port it bound
(port 0 lets the OS pick one) and a broker not reachable yet at start (docs/ingestion.md).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from streams.collector import Collector, serve
from streams.collector_publishers import Publisher
from streams.metrics import Metrics
from streams.settings import Settings
from streams.stoppable import finished_before_stop
from streams.web import bound_port

log = logging.getLogger(__name__)


def run_collector(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    publisher: Publisher | None = None,
    on_listening: Callable[[str, int], None] | None = None,
) -> None:
    """Blocking entry point of ``leadpulse collector``: serve until SIGINT/SIGTERM, then flush and stop.

    ``on_listening(host, port)`` is called once the port is bound, with the port the OS gave: with port 0
    the configured one says nothing about where the collector is (without it the address is logged)."""
    if not settings.write_keys:
        raise ValueError(
            'no write keys: set LEADPULSE_WRITE_KEYS=\'{"web": "<key>"}\' before starting the '
            "collector (every request needs one)"
        )
    metrics = Metrics(CollectorRegistry(), component="collector", process_metrics=True)
    collector = Collector(settings, metrics=metrics, publisher=publisher)
    host = host or settings.web_host
    port = port if port is not None else settings.collector_port
    asyncio.run(_serve_until_stopped(collector, host, port, on_listening, settings.collector_broker_wait_s))


async def _serve_until_stopped(
    collector: Collector, host: str, port: int, on_listening: Callable[[str, int], None] | None, wait_s: float
) -> None:
    """Serve, then start the producer, retrying an unreachable broker for ``wait_s`` (``/health`` answers,
    ``/ready`` does not meanwhile; then the error is raised), until SIGINT/SIGTERM. Why not aiohttp's
    ``run_app``: it tells no one the port it bound (port 0), and it starts the producer before binding."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve(collector, host, port, start_publisher=False)
    try:
        bound = bound_port(runner)
        if on_listening is not None:
            on_listening(host, bound)
        else:
            log.info(
                "collector listening on http://%s:%d (POST /v1/events; /metrics /health /ready)", host, bound
            )
        # the broker never answering within the wait is raised to the caller; a stop first ends the wait
        if await finished_before_stop(collector.start_publisher_waiting(wait_s), stop):
            await stop.wait()
    finally:
        await runner.cleanup()
