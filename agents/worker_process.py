"""``leadpulse worker`` as a process: the erasure log, the lead worker and its ops endpoints, signals."""

from __future__ import annotations

import asyncio
import logging
import signal

from agents.rules import Rules
from agents.worker import LeadWorker
from leadpulse import native
from streams.gc_tuning import tune_gc
from streams.logs import setup_logging
from streams.metrics import Metrics
from streams.settings import Settings
from streams.stoppable import finished_before_stop

log = logging.getLogger(__name__)


async def serve_worker(settings: Settings, rules: Rules, metrics: Metrics, stop: asyncio.Event) -> LeadWorker:
    """The worker plus /metrics, /health and /ready on the web host/port, until ``stop`` is set."""
    from streams.erasures import ErasureLog
    from streams.web import bound_port, start_ops_server

    erasures = ErasureLog(settings)
    worker = LeadWorker(settings, rules, metrics, erasures=erasures)
    # Every erasure known before the first record is processed. With the broker hung the read waits up to
    # 30-40 s per step: a stop meanwhile ends it (nothing consumed; ErasureLog.start closes its consumer).
    if not await finished_before_stop(erasures.start(), stop):
        log.info("worker stopped while reading the erasure log (nothing consumed)")
        return worker
    try:
        runner = await start_ops_server(settings.web_host, settings.web_port, metrics.registry, worker.ready)
        # the port bound: with LEADPULSE_WEB_PORT=0 the OS picks it
        log.info(
            "ops endpoints on http://%s:%s (/metrics /health /ready)", settings.web_host, bound_port(runner)
        )
        try:
            await worker.run(stop)
        finally:
            await runner.cleanup()
    finally:
        await erasures.stop()
    return worker


def run_worker(settings: Settings, rules: Rules, loglevel: str = "info") -> None:
    """Run until SIGINT/SIGTERM, then finish the batch in flight, commit and leave the group."""
    from prometheus_client import CollectorRegistry

    setup_logging(loglevel)
    log.info("per-event modules: %s", native.describe())
    metrics = Metrics(CollectorRegistry(), component="worker", process_metrics=True)
    tune_gc()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        worker = await serve_worker(settings, rules, metrics, stop)
        # (a worker stopped before its first assignment has said so itself)
        if not worker.started:
            return
        writes = (
            "the writes still waiting on the broker were given up (processed again after the restart)"
            if worker.gave_up_at_stop
            else "the batch in flight finished"
        )
        if worker.left_group:
            log.info("worker stopped: %s, group left", writes)
        else:  # logged before too, while stopping, with the reason (streams/kafka_close.py)
            log.warning(
                "worker stopped: %s; the group was not left (the broker did not answer), so its partitions "
                "move to other workers after the session timeout",
                writes,
            )

    asyncio.run(main())
