"""Work that gives way to a stop: ``finished_before_stop`` runs an awaitable until it finishes or the process
is told to stop, and says which came first.

Why one helper: a process waiting on a broker that does not answer (a restore's changelog read, a consumer's
first group join, the notifier's read of the erasure log) waited as long as the broker took, with SIGTERM
ignored. The worker, the notifier and ``kafka_close.start_unless_stopped`` each had their own copy of the
race between the work and the stop; they now share this one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

#: What tells the work to give way: an ``asyncio.Event``, or a callable polled every ``poll_s`` (so that a
#: ``threading.Event``'s ``is_set`` serves too); None for work that is never given up.
Stop = asyncio.Event | Callable[[], bool] | None


async def finished_before_stop(
    work: Awaitable[Any], stop: Stop, *, grace_s: float = 0.0, poll_s: float = 0.2
) -> bool:
    """Run ``work``; True once it finished (its exception, if any, raised), False when ``stop`` came first
    and the work had not finished ``grace_s`` later: then it is cancelled and awaited (its own clean-up done,
    an error of that clean-up dropped) before False is returned, so the caller says what was given up.

    Work that has finished when the stop is seen counts as finished. A cancellation of the caller cancels
    the work and propagates at once, without waiting for the work's clean-up: a cancellation comes after a
    stop had its chance, and a clean-up against a broker that does not answer can take ``STOP_TIMEOUT_S``."""
    task = asyncio.ensure_future(work)
    if stop is None:
        await task
        return True
    try:
        await _until_done_or_stopped(task, stop, poll_s)
        if not task.done() and grace_s > 0:
            await asyncio.wait({task}, timeout=grace_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False


async def _until_done_or_stopped(
    task: asyncio.Future[Any], stop: asyncio.Event | Callable[[], bool], poll_s: float
) -> None:
    if isinstance(stop, asyncio.Event):
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        return
    while not task.done() and not stop():
        await asyncio.wait({task}, timeout=poll_s)
