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
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from leadpulse.live_view import scrape
from streams.broker import create_topics, free_port, start_private_broker
from streams.topics import HOT_LEADS
from tests.processes import http_ok, pipeline_processes, wait_until

pytestmark = pytest.mark.faults

#: Under the notifier's 30 s grace period: its last commit attempt (5 s at a stop), then the clients' closes
#: (10 s, both at once).
STOP_WITHIN_S = 25.0


def owned(name: str, port: int) -> int:
    """Partitions the process owns now (-1 while it does not answer): the worker's and the sink's ``/ready``
    say how many; the notifier exports a ``leadpulse_consumer_lag`` series per partition it owns, refreshed
    every 0.5 s."""
    if name == "notifier":
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        return sum(1 for metric, _ in samples if metric == "leadpulse_consumer_lag") if samples else -1
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            body = json.load(response)
    except urllib.error.HTTPError as not_ready:  # 503 while rebalancing: the body still says
        body = json.load(not_ready)
    except OSError:
        return -1
    return int(body.get("assigned_partitions", -1))


async def _join_and_leave(bootstrap: str, group: str, topic: str, joined: Callable[[], bool]) -> None:
    """One more member joins ``group`` until it has partitions and the process in the group has joined that
    generation too (``joined``: it owns fewer partitions), then leaves: the process is in a generation above
    0."""
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
        while not await asyncio.to_thread(joined):
            assert time.monotonic() < deadline, f"the process did not rejoin group {group} within 60 s"
            await consumer.getmany(timeout_ms=200)
    finally:
        await consumer.stop()


async def _rebalance_all(bootstrap: str, groups: list[tuple[str, str, Callable[[], bool]]]) -> None:
    joins = [_join_and_leave(bootstrap, group, topic, joined) for group, topic, joined in groups]
    await asyncio.wait_for(asyncio.gather(*joins), 90)


def test_sigterm_while_the_broker_hangs_exits_within_the_grace_period(tmp_path: Path) -> None:
    broker = start_private_broker(tmp_path / "tansu.log")
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
        # What each process owns as the group's only member: everything it consumes.
        wait_until(lambda: owned("notifier", ports["notifier"]) == HOT_LEADS.partitions, 30, "notifier lag")
        alone = {name: owned(name, ports[name]) for name in procs}
        assert min(alone.values()) > 0, alone
        # Each process rejoins its group in a new generation: with the extra member (it then owns fewer
        # partitions), and again once the extra member left (all of them again). Tansu does not answer
        # DescribeGroups in a form kafka-python reads, so this watches what each process owns.
        asyncio.run(
            _rebalance_all(
                broker.bootstrap,
                [
                    (group, topic, lambda n=name: 0 <= owned(n, ports[n]) < alone[n])  # type: ignore[misc]
                    for name, (group, topic) in groups.items()
                ],
            )
        )
        wait_until(
            lambda: all(owned(name, ports[name]) == alone[name] for name in procs),
            60,
            "every process owning all its partitions again after the extra member left",
        )

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
