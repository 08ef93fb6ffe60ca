"""A stop while the worker restores its partitions from a broker that stopped answering: the worker is gone
within its stop limit, with a log line that says what was given up.

Found in a review: a rebalance's changelog read runs inside the rebalance callback and holds the worker's
lock; with the broker hung (``kill -STOP``, a half-open network path) that read waits for ever, and the poll
loop, blocked on the lock, never looked at the stop event: SIGTERM was ignored until the broker answered
(SIGKILL by the orchestrator, after its grace period).

The broker is this test's own (it is paused), and the pause is injected exactly when the second worker's
join makes the first one read its changelog again: the read itself is the real one, against the real broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from agents import worker_rebalance
from agents.kafka_batches import BatchSender, Record
from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.broker import create_topics, start_private_broker
from streams.producer import Producer
from streams.settings import Settings, load_settings
from tests.integration.test_worker import demo_request

pytestmark = pytest.mark.faults

#: The worker's part of the 25 s the shutdown fault tests allow a process (test_shutdown_broker_hung.py):
#: the client closes after the loop ends are bounded on their own (streams/kafka_close.py).
STOP_WITHIN_S = 25.0


def test_a_stop_while_a_rebalance_reads_the_changelog_from_a_hung_broker_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broker = start_private_broker(tmp_path / "tansu.log")
    assert broker.process is not None
    tansu_pid = broker.process.pid
    prefix = "restore-stop."
    create_topics(broker.bootstrap, prefix)
    settings: Settings = load_settings(
        kafka_bootstrap=broker.bootstrap, topic_prefix=prefix, data_dir=tmp_path / "data"
    )
    real_read = worker_rebalance.read_changelog
    armed: list[bool] = []
    paused: list[float] = []

    async def read_from_a_pausing_broker(worker: LeadWorker, partitions: set[int]) -> None:
        if armed and not paused:
            os.kill(tansu_pid, signal.SIGSTOP)  # accepts connections, answers nothing
            paused.append(time.monotonic())
        await real_read(worker, partitions)

    monkeypatch.setattr(worker_rebalance, "read_changelog", read_from_a_pausing_broker)
    caplog.set_level(logging.INFO, logger="agents.worker")

    async def scenario() -> dict[str, float]:
        first = LeadWorker(settings, load_rules(None), scan_interval_s=3600)
        second = LeadWorker(settings, load_rules(None), scan_interval_s=3600)
        stop = asyncio.Event()
        running = {"first": asyncio.create_task(first.run(stop))}
        deadline = time.monotonic() + 60
        while not first.ready()[0]:
            assert time.monotonic() < deadline and not running["first"].done(), "first worker never ready"
            await asyncio.sleep(0.1)
        armed.append(True)
        running["second"] = asyncio.create_task(second.run(stop))  # its join makes the first one restore
        while not paused:
            assert time.monotonic() < deadline, "no changelog read after the second worker joined"
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # the read is waiting on the paused broker
        assert not running["first"].done(), "the first worker ended while the broker was paused"
        stop.set()
        started = time.monotonic()
        took: dict[str, float] = {}
        pending = dict(running)
        while pending and time.monotonic() - started < 90:
            for name, task in list(pending.items()):
                if task.done():
                    took[name] = time.monotonic() - started
                    del pending[name]
            await asyncio.sleep(0.1)
        for task in pending.values():
            task.cancel()
        os.kill(tansu_pid, signal.SIGCONT)
        for name, task in running.items():
            if name in took:
                task.result()  # the worker's own exception, if it ended with one
        await asyncio.gather(*pending.values(), return_exceptions=True)
        return took

    try:
        took = asyncio.run(scenario())
    finally:
        os.kill(tansu_pid, signal.SIGCONT)
        broker.stop()
    print(f"\nstop times, broker paused during a restore: { {n: round(t, 1) for n, t in took.items()} }")
    for name in ("first", "second"):
        assert name in took, f"the {name} worker was still running 90 s after the stop (took: {took})"
        assert took[name] < STOP_WITHIN_S, f"the {name} worker took {took[name]:.1f} s to stop"
    assert "stopped while restoring" in caplog.text, caplog.text[-3000:]


def test_a_stop_while_a_batch_waits_on_a_hung_broker_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for the batch in flight: its writes wait for acknowledgements up to the producer's request
    timeout (40 s), and the stop waited for them, then for the client closes: past the grace period."""
    broker = start_private_broker(tmp_path / "tansu.log")
    assert broker.process is not None
    tansu_pid = broker.process.pid
    prefix = "batch-stop."
    create_topics(broker.bootstrap, prefix)
    settings: Settings = load_settings(
        kafka_bootstrap=broker.bootstrap, topic_prefix=prefix, data_dir=tmp_path / "data"
    )
    real_send = BatchSender.send
    armed: list[bool] = []
    paused: list[float] = []

    async def send_to_a_pausing_broker(self: BatchSender, records: Sequence[Record]) -> None:
        if armed and not paused and records:  # (the SLA scan's first run may send nothing after arming)
            os.kill(tansu_pid, signal.SIGSTOP)
            paused.append(time.monotonic())
        await real_send(self, records)

    monkeypatch.setattr(BatchSender, "send", send_to_a_pausing_broker)
    caplog.set_level(logging.INFO, logger="agents.worker")

    async def scenario() -> float:
        worker = LeadWorker(settings, load_rules(None), scan_interval_s=3600)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        deadline = time.monotonic() + 60
        while not worker.ready()[0]:
            assert time.monotonic() < deadline and not running.done(), "worker never ready"
            await asyncio.sleep(0.1)
        armed.append(True)
        now = int(time.time() * 1000)
        with Producer(settings) as producer:
            producer.send("download", demo_request("L-stop", now))
        while not paused:
            assert time.monotonic() < deadline and not running.done(), "the batch was never written"
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # the batch waits on the paused broker
        assert not running.done(), "the worker ended while the broker was paused"
        stop.set()
        started = time.monotonic()
        done, _ = await asyncio.wait({running}, timeout=90)
        took = time.monotonic() - started
        os.kill(tansu_pid, signal.SIGCONT)
        if not done:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            return float("inf")
        running.result()
        return took

    try:
        took = asyncio.run(scenario())
    finally:
        os.kill(tansu_pid, signal.SIGCONT)
        broker.stop()
    print(f"\nstop time, broker paused during a batch's writes: {took:.1f} s")
    assert took < STOP_WITHIN_S, f"the worker took {took:.1f} s to stop"
    assert "stopped while" in caplog.text, caplog.text[-3000:]
