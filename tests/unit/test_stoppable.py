"""``streams.stoppable.finished_before_stop``: the one race between a piece of work and a stop, shared by the
worker (``unless_stopped``), the notifier (its erasure-log read) and ``kafka_close.start_unless_stopped``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from streams.stoppable import Stop, finished_before_stop

pytestmark = pytest.mark.unit


class Work:
    """Waits until ``finish`` is set (or for ever); records whether it was cancelled and cleaned up."""

    def __init__(self, cleanup_error: Exception | None = None) -> None:
        self.finish = asyncio.Event()
        self.cancelled = self.cleaned_up = False
        self.cleanup_error = cleanup_error

    async def run(self) -> str:
        try:
            await self.finish.wait()
            return "done"
        except asyncio.CancelledError:
            self.cancelled = True
            await asyncio.sleep(0.01)  # a clean-up that takes a moment, as closing a consumer does
            self.cleaned_up = True
            if self.cleanup_error is not None:
                raise self.cleanup_error from None
            raise


@dataclass
class StopSignal:
    """What the work is given (``stop``) and how the test sets it (``set``)."""

    stop: Stop
    set: Callable[[], None]


@pytest.fixture(params=["asyncio.Event", "polled callable"])
def signal(request: pytest.FixtureRequest) -> StopSignal:
    """An ``asyncio.Event`` (the worker, the notifier) or a ``threading.Event``'s ``is_set``, polled (the
    sink)."""
    event = asyncio.Event() if request.param == "asyncio.Event" else threading.Event()
    return StopSignal(event if isinstance(event, asyncio.Event) else event.is_set, event.set)


async def _stopped_after(work: Work, signal: StopSignal, grace_s: float = 0.0) -> bool:
    """``finished_before_stop(work.run(), ...)`` with the stop set while the work waits."""
    racing = asyncio.ensure_future(
        finished_before_stop(work.run(), signal.stop, grace_s=grace_s, poll_s=0.01)
    )
    await asyncio.sleep(0.02)
    assert not racing.done()
    signal.set()
    return await asyncio.wait_for(racing, 5)


async def test_work_that_finishes_first_is_finished(signal: StopSignal) -> None:
    work = Work()
    work.finish.set()
    assert await finished_before_stop(work.run(), signal.stop, poll_s=0.01) is True
    assert not work.cancelled


async def test_an_error_of_the_work_is_raised(signal: StopSignal) -> None:
    async def failing() -> None:
        raise ValueError("the work failed")

    with pytest.raises(ValueError, match="the work failed"):
        await finished_before_stop(failing(), signal.stop, poll_s=0.01)


async def test_a_stop_first_cancels_the_work_and_returns_after_its_clean_up(signal: StopSignal) -> None:
    work = Work()
    assert await _stopped_after(work, signal) is False
    assert work.cancelled and work.cleaned_up


async def test_an_error_in_the_clean_up_of_work_given_up_is_dropped(signal: StopSignal) -> None:
    work = Work(cleanup_error=RuntimeError("closing failed"))
    assert await _stopped_after(work, signal) is False
    assert work.cleaned_up


async def test_a_stop_already_set_gives_up_work_that_would_wait(signal: StopSignal) -> None:
    signal.set()
    work = Work()
    assert await asyncio.wait_for(finished_before_stop(work.run(), signal.stop, poll_s=0.01), 5) is False


async def test_work_finishing_within_the_grace_period_after_the_stop_is_finished() -> None:
    stop, work = asyncio.Event(), Work()
    racing = asyncio.ensure_future(finished_before_stop(work.run(), stop, grace_s=5.0))
    await asyncio.sleep(0.02)
    stop.set()
    await asyncio.sleep(0.05)
    assert not racing.done()  # waiting out the grace period
    work.finish.set()
    assert await asyncio.wait_for(racing, 5) is True
    assert not work.cancelled


async def test_work_not_finished_within_the_grace_period_is_given_up() -> None:
    stop, work = asyncio.Event(), Work()
    assert await _stopped_after(work, StopSignal(stop, stop.set), grace_s=0.05) is False
    assert work.cancelled and work.cleaned_up


async def test_without_a_stop_the_work_is_awaited_to_its_end() -> None:
    work = Work()
    racing = asyncio.ensure_future(finished_before_stop(work.run(), None))
    await asyncio.sleep(0.05)
    assert not racing.done()
    work.finish.set()
    assert await asyncio.wait_for(racing, 5) is True


async def test_a_cancelled_caller_cancels_the_work_and_is_cancelled(signal: StopSignal) -> None:
    work = Work()
    racing = asyncio.ensure_future(finished_before_stop(work.run(), signal.stop, poll_s=0.01))
    await asyncio.sleep(0.02)
    racing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await racing
    await asyncio.sleep(0.05)  # the work unwinds on its own
    assert work.cancelled and work.cleaned_up
