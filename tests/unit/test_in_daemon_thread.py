"""``streams.kafka_close.in_daemon_thread``: a blocking kafka-python call that a stop can give up, which
``asyncio.run`` does not wait for at exit (``asyncio.to_thread``'s executor thread held a notifier's SIGTERM
for kafka-python's 30 s bootstrap timeout: tests/faults/test_notifier_start_broker_hung.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from streams.kafka_close import in_daemon_thread

pytestmark = pytest.mark.unit


def test_the_result_and_the_error_of_the_call_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("no broker")

    async def main() -> int:
        with pytest.raises(ValueError, match="no broker"):
            await in_daemon_thread(fail)
        return await in_daemon_thread(pow, 2, 10)

    assert asyncio.run(main()) == 1024


def test_a_cancelled_call_does_not_hold_asyncio_run_at_exit() -> None:
    release = threading.Event()
    running = threading.Event()

    def blocking() -> str:  # as kafka-python waiting for a hung broker's answer
        running.set()
        release.wait(10)
        return "late"

    async def main() -> None:
        task = asyncio.ensure_future(in_daemon_thread(blocking))
        while not running.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    timer = threading.Timer(3.0, release.set)  # so that the old behaviour ends, 3 s late, instead of hanging
    timer.start()
    started = time.monotonic()
    try:
        asyncio.run(main())
        took = time.monotonic() - started
    finally:
        release.set()
        timer.cancel()
    assert took < 1.0, f"asyncio.run waited {took:.1f}s for the abandoned call"
