"""A worker under benchmark: the subprocess, its /metrics polled for progress and CPU, and the workload
pre-produced to its input topics. Shared by the throughput bench (``bench/worker_bench.py``), its latency
phase (``bench/latency.py``) and the soak (``bench/soak.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agents.kafka_batches import read_to_end
from bench.workload import Encoded
from streams.broker import free_port
from streams.producer import Producer
from streams.settings import Settings, environ_without_settings
from streams.topics import INPUTS, LEAD_STATE

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Throughput:
    events: int  # events counted between the first poll that saw any and the last poll
    seconds: float
    events_per_s: float
    cpu_seconds: float  # worker process CPU over the same window
    complete: bool  # False = the time budget ran out first: the rate covers a prefix of the workload
    # True = the first batch the worker counted held every event, so its time is not in the window (a
    # small workload): the rate is an upper bound, not a measurement (``throughput``)
    upper_bound: bool = False


class WorkerProcess:
    """A worker subprocess against the bench broker, its /metrics on a free port, its output in a log."""

    def __init__(self, command: list[str], settings: Settings, log: Path) -> None:
        self.port = free_port()
        env = environ_without_settings()
        env.update(
            LEADPULSE_BROKER_HOST=settings.broker_host,
            LEADPULSE_BROKER_PORT=str(settings.broker_port),
            LEADPULSE_TOPIC_PREFIX=settings.topic_prefix,
            LEADPULSE_DATA_DIR=str(settings.data_dir),
            LEADPULSE_WEB_PORT=str(self.port),
            LEADPULSE_LOG_LEVEL="INFO",  # naive worker: WARNING+ turns Faust's spinner on (root at DEBUG)
            PYTHONUNBUFFERED="1",
        )
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def sample(self, inputs: set[str] | None) -> tuple[float, float] | None:
        """(events consumed from ``inputs``, or from any topic if None; process CPU seconds).

        None while /metrics is not up yet.
        """
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{tail}") from None
            return None
        consumed = cpu = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "leadpulse_events_consumed_total" and (
                    inputs is None or s.labels.get("topic") in inputs
                ):
                    consumed += s.value
                elif s.name == "process_cpu_seconds_total":
                    cpu = s.value
        return consumed, cpu

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()


def wait_idle(worker: WorkerProcess, quiet_s: float = 2.0, timeout_s: float = 60.0) -> None:
    """Until nothing was consumed (inputs and identity hops) for ``quiet_s``: forwards have settled."""
    deadline = time.monotonic() + timeout_s
    last, since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        seen = worker.sample(None)
        count = seen[0] if seen else -1.0
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)
    raise RuntimeError(f"worker still busy after {timeout_s}s; log: {worker.log}")


def input_topics(settings: Settings) -> set[str]:
    """Metric labels of the input topics: catalogue names (the worker's) or prefixed ones."""
    return {spec.name for spec in INPUTS} | {settings.topic(spec.name) for spec in INPUTS}


def produce(settings: Settings, records: Iterable[Encoded]) -> int:
    with Producer(settings, linger_ms=20) as producer:
        for r in records:
            producer.send_encoded(settings.topic(r.topic), r.key, r.value)
        producer.flush()
        return producer.sent


Sample = tuple[float, float, float]  # (monotonic seconds, input events consumed, worker CPU seconds)


def wait_consumed(
    worker: WorkerProcess,
    inputs: set[str],
    total: int,
    budget_s: float,
    start_timeout_s: float = 90.0,
    poll_s: float = 0.1,
) -> Throughput:
    """Poll /metrics until ``total`` input events were consumed (or ``budget_s`` after the first one)."""
    deadline = time.monotonic() + start_timeout_s
    idle: Sample | None = None  # the last poll that saw nothing consumed yet
    counted: list[Sample] = []
    while True:
        now = time.monotonic()
        seen = worker.sample(inputs)
        if seen is not None and seen[0] == 0:
            idle = (now, 0.0, seen[1])
        if seen is not None and seen[0] > 0:
            if not counted:
                deadline = now + budget_s
            counted.append((now, seen[0], seen[1]))
            if seen[0] >= total:
                break
        if now > deadline:
            if not counted:
                raise RuntimeError(f"worker consumed nothing within {start_timeout_s}s; log: {worker.log}")
            break
        time.sleep(poll_s)
    return throughput(idle, counted, total)


def throughput(idle: Sample | None, counted: list[Sample], total: int) -> Throughput:
    """The rate from the first poll that saw events to the last one.

    Why not from the last poll that saw none (``idle``), as until stop 28: the worker counts a batch once it
    is durable, so that window held the first batch's events but not the time spent on them. The batch
    loop's first batch is 1.5k-55k events (the alignment releases held records together), 3-25% of the
    workload's work left out of the time. Events counted after the first batch were all worked on inside
    this window. Only when the first counted batch held everything (a small workload) is there no such
    window: then the old one is used and the result says it is an upper bound."""
    if not counted:
        raise ValueError("no poll saw an event consumed")
    first, last = counted[0], counted[-1]
    upper_bound = last[1] <= first[1] and idle is not None
    if upper_bound:
        assert idle is not None
        first = idle
    events = int(last[1] - first[1])
    seconds = max(last[0] - first[0], 1e-9)
    return Throughput(
        events, seconds, events / seconds, last[2] - first[2], last[1] >= total, upper_bound=upper_bound
    )


def changelog_size(settings: Settings) -> tuple[int, int]:
    """(records, bytes of keys and values) in the lead-state changelog: every state write of the run, since
    Tansu does not compact (how much the worker wrote, not what a compacted topic would keep)."""
    found = [0, 0]

    def apply(_partition: int, key: bytes, value: bytes | None, _headers: object) -> None:
        found[0] += 1
        found[1] += len(key or b"") + len(value or b"")

    topic = settings.topic(LEAD_STATE.name)
    asyncio.run(read_to_end(settings, topic, set(range(LEAD_STATE.partitions)), True, apply))
    return found[0], found[1]
