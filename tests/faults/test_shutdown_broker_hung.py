"""SIGTERM while the broker is hung (accepts connections, never answers): every consumer process exits 0
within its grace period.

Found by an ops audit (``kill -STOP`` of the broker): aiokafka's ``consumer.stop()`` awaits the coordination
task and a LeaveGroup request, each bounded only by ``request_timeout_ms`` (40 s), so the worker took 41 s,
the sink 110 s and the notifier 120 s to stop; an orchestrator (grace 30 to 60 s) would have SIGKILLed
them. ``streams.kafka_close.stop_consumer`` now gives the clean close ``STOP_TIMEOUT_S`` (10 s).

Why the extra group member: aiokafka sends LeaveGroup only for ``generation > 0``, and a group's first
generation on Tansu is 0, so a process that never saw a rebalance skipped the hanging request and stopped
at once. In production every group has rebalanced (restarts, scaling), which is the case measured here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from streams.broker import EmbeddedBroker, create_topics, free_port, tansu_binary
from streams.settings import load_settings
from tests.processes import http_ok, pipeline_processes, wait_until

pytestmark = pytest.mark.faults

#: Under the notifier's 30 s grace period, with room for a commit attempt (10 s) before the close (10 s).
STOP_WITHIN_S = 25.0


async def _join_and_leave(bootstrap: str, group: str, topic: str) -> None:
    """One more member joins ``group`` until it has partitions, then leaves: a rebalance, so the process in
    the group is in a generation above 0."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment():
            assert time.monotonic() < deadline, f"no assignment in group {group} within 60 s"
            await consumer.getmany(timeout_ms=200)
    finally:
        await consumer.stop()


async def _rebalance_all(bootstrap: str, groups: list[tuple[str, str]]) -> None:
    joins = [_join_and_leave(bootstrap, group, topic) for group, topic in groups]
    await asyncio.wait_for(asyncio.gather(*joins), 90)


def test_sigterm_while_the_broker_hangs_exits_within_the_grace_period(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", free_port(), tmp_path / "tansu.log")
    broker.start()
    assert broker.process is not None
    tansu_pid = broker.process.pid
    prefix = "hung."
    create_topics(broker.bootstrap, prefix)
    ports = {name: free_port() for name in ("worker", "sink", "notifier")}
    procs = pipeline_processes(tmp_path, broker.bootstrap, prefix, ports)
    groups = {
        "worker": (f"{prefix}leadpulse-worker", f"{prefix}events.web_visits"),
        "sink": (f"{prefix}leadpulse-sink", f"{prefix}events.web_visits"),
        "notifier": (f"{prefix}leadpulse-notifier", f"{prefix}leads.hot"),
    }
    stopped = False
    try:
        for name, proc in procs.items():
            url = f"http://127.0.0.1:{ports[name]}/ready"
            wait_until(lambda url=url: http_ok(url), 120, f"{name} ready", proc)  # type: ignore[misc]
        asyncio.run(_rebalance_all(broker.bootstrap, list(groups.values())))
        # Each process rejoins its group in a new generation (a Tansu rebalance takes about 3 s; Tansu does
        # not answer DescribeGroups in a form kafka-python reads, so this waits rather than asks).
        time.sleep(10)

        os.kill(tansu_pid, signal.SIGSTOP)  # the broker still accepts connections; it answers nothing
        stopped = True
        time.sleep(4)  # requests in flight now hang: heartbeats, fetches
        for name, proc in procs.items():
            assert proc.proc.poll() is None, f"{name} exited when the broker hung:\n{proc.output()[-3000:]}"
        started = time.monotonic()
        for proc in procs.values():
            proc.proc.send_signal(signal.SIGTERM)
        took: dict[str, float] = {}
        while len(took) < len(procs) and time.monotonic() - started < 90:
            for name, proc in procs.items():
                if name not in took and proc.proc.poll() is not None:
                    took[name] = time.monotonic() - started
            time.sleep(0.1)
        print(f"\nstop times with a hung broker: { {n: round(t, 1) for n, t in took.items()} }")
        for name, proc in procs.items():
            out = proc.output()
            assert name in took, f"{name} still running 90 s after SIGTERM:\n{out[-3000:]}"
            assert proc.proc.returncode == 0, f"{name} exited with {proc.proc.returncode}:\n{out[-3000:]}"
            assert took[name] < STOP_WITHIN_S, f"{name} took {took[name]:.1f}s to stop:\n{out[-3000:]}"
            for bad in ("Traceback", "Unclosed", "CancelledError"):
                assert bad not in out, f"{name}: {bad!r} in its output:\n{out[-4000:]}"
    finally:
        if stopped:
            os.kill(tansu_pid, signal.SIGCONT)
        for proc in procs.values():
            proc.stop(timeout=5)
        broker.stop()
