"""Running a ``LeadWorker`` in-process inside a test, and waiting on its state without hanging forever.

Why in-process: these tests look at the worker's state store and timers while it runs, which a CLI
subprocess does not expose. Why the ``running`` task in every wait: a worker that crashed must fail the test
at once with its own exception, not after the deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from agents.kafka_batches import read_to_end
from agents.lead_store import LeadStore
from agents.worker import LeadWorker
from streams.erasures import ErasureLog
from streams.settings import Settings


@asynccontextmanager
async def running_worker(worker: LeadWorker) -> AsyncIterator[asyncio.Task[None]]:
    """The worker's run loop as a task; stopped and awaited (its exception raised) on exit."""
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        yield running
    finally:
        stop.set()
        await running


@asynccontextmanager
async def ready_with_erasures(worker: LeadWorker, settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """The worker running with its erasure log, as ``agents/worker_process.py`` runs it (the log started in
    the loop that runs the worker), once it is ready; the log stopped on exit."""
    erasures = ErasureLog(settings)
    await erasures.start()
    worker.erasures = erasures
    try:
        async with running_worker(worker) as running:
            await wait_until(lambda: worker.ready()[0], running, seen=lambda: "worker never became ready")
            yield running
    finally:
        await erasures.stop()


def stages(worker: LeadWorker, *leads: str) -> tuple[str | None, ...]:
    """Each lead's stage in the worker's store (None: not seen yet)."""
    states = [worker.store.get(lead.encode()) for lead in leads]
    return tuple(state.stage if state is not None else None for state in states)


async def wait_until(
    condition: Callable[[], bool],
    running: asyncio.Task[None],
    timeout_s: float = 60,
    seen: Callable[[], Any] = lambda: None,
) -> None:
    """Poll ``condition`` every 0.1 s; fail naming ``seen()`` after ``timeout_s`` or if the worker stopped."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline and not running.done(), seen()
        await asyncio.sleep(0.1)


def durable_states(settings: Settings) -> LeadStore:
    """The lead states in the changelog (what a restart would restore), read after the worker stopped."""
    store = LeadStore()

    def apply(partition: int, key: bytes, value: bytes | None, _headers: Any) -> None:
        store.restore(partition, key, value, None)

    topic = settings.topic("leadpulse.internal.lead_state")
    asyncio.run(read_to_end(settings, topic, set(range(8)), True, apply))
    return store
