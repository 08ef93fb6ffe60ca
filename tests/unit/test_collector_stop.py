"""``InFlight`` (streams/collector_publishers.py): at a collector's stop, publishes still waiting for the
broker after the grace are cut (their requests answered 503), later ones at once, and any other cancellation
of a request's task still cancels it. The whole process, on a hung broker: tests/faults/
test_collector_stop_broker_hung.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from streams.collector_publishers import InFlight, Message, PublishCut

pytestmark = pytest.mark.unit


class NeverAcknowledged:
    """A publisher whose broker never answers (the hung broker of the fault test, in-process)."""

    async def start(self) -> None:
        pass

    async def publish(self, messages: Sequence[Message]) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        pass


def test_publishes_still_waiting_after_the_grace_are_cut_and_later_ones_at_once() -> None:
    async def scenario() -> tuple[list[object], float]:
        in_flight = InFlight(grace_s=0.2)
        publisher = NeverAcknowledged()
        waiting = [asyncio.create_task(in_flight.publish(publisher, [("t", None, b"v")])) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert len(in_flight) == 3
        loop = asyncio.get_running_loop()
        started = loop.time()
        await in_flight.begin_stop()
        assert in_flight.stopping and not in_flight.cut_off
        results: list[object] = list(await asyncio.gather(*waiting, return_exceptions=True))
        took = loop.time() - started
        with pytest.raises(PublishCut):
            await in_flight.publish(publisher, [("t", None, b"v")])
        assert len(in_flight) == 0
        return results, took

    results, took = asyncio.run(scenario())
    assert all(isinstance(r, PublishCut) for r in results), results
    assert 0.15 < took < 1.0, took


def test_another_cancellation_of_a_request_still_cancels_it() -> None:
    """The cut takes back only its own cancellation: aiohttp's (its shutdown timeout) must still end it."""

    async def scenario() -> None:
        in_flight = InFlight(grace_s=60)
        task = asyncio.create_task(in_flight.publish(NeverAcknowledged(), [("t", None, b"v")]))
        await asyncio.sleep(0.05)
        await in_flight.begin_stop()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        in_flight.cancel()

    asyncio.run(scenario())
