"""A worker stays ready while a rebalance reloads its states, once it has restored its first assignment.

Before: every scale step made every worker of the group, survivors included, answer 503 on ``/ready`` for
the 2-3 s of the reload, which held PodDisruptionBudgets and rollouts back. Here a second worker joins the
group and leaves again (two real rebalances on the real broker) while the first one's ``ready()`` is
sampled every 20 ms: it must reload (``restoring`` seen true) without ever answering not-ready.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.settings import Settings
from tests.integration.worker_harness import running_worker, wait_until

pytestmark = pytest.mark.integration


def test_a_worker_stays_ready_through_a_rebalance_reload(broker_settings: Settings) -> None:
    first = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
    second = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
    samples: list[tuple[bool, bool]] = []  # (ready, restoring) of the first worker

    async def sample(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ok, body = first.ready()
            samples.append((ok, bool(body["restoring"])))
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        async with running_worker(first) as running:
            await wait_until(lambda: first.ready()[0], running, seen=lambda: "first worker never ready")
            generation = first.generation
            stop_sampling = asyncio.Event()
            sampler = asyncio.create_task(sample(stop_sampling))
            try:
                async with running_worker(second) as joined:  # rebalance 1: partitions split
                    await wait_until(lambda: second.ready()[0], joined, seen=lambda: "second never ready")
                    await wait_until(lambda: first.generation > generation, running)
                    after_join = first.generation
                # rebalance 2: the second left, the first takes everything back
                await wait_until(lambda: first.generation > after_join and not first.restoring, running)
                deadline = time.monotonic() + 1
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            finally:
                stop_sampling.set()
                await sampler

    asyncio.run(scenario())
    assert any(restoring for _, restoring in samples), "no reload was observed: no rebalance happened"
    assert all(ok for ok, _ in samples), f"not ready in {sum(not ok for ok, _ in samples)} of {len(samples)}"
