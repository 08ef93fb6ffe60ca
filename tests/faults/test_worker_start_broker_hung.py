"""SIGTERM while the broker hangs during the worker's start: ``leadpulse worker`` exits 0 within the 25 s the
other processes are given (tests/faults/test_shutdown_broker_hung.py), at each step of its start.

How a step is hit: as tests/faults/test_notifier_start_broker_hung.py, a proxy in front of a private Tansu
pauses it (SIGSTOP) when the ``nth`` connection of a client comes in. The worker's connections, in order:
the erasure log's consumer (``aiokafka-0…``), its topic check and Tansu check (kafka-python, 1 and 2), the
worker's topic creation (kafka-python, 3; since stop 30 the worker takes the erasure log's Tansu answer, it
asked again before), its producer (``aiokafka-producer``), its group consumer (``aiokafka-0…``, 2). What each
did before stop 28 (measured with this test):

- the erasure log's read (``agents.worker_process.serve_worker``) was not given up at a stop: its consumer
  start waited aiokafka's 40 s bootstrap timeout and failed (38 s, exit 1); hung at its topic or Tansu check,
  each later step of the start waited out its own 30 s timeout, still running 90 s after SIGTERM;
- the worker's Tansu check and topic creation (``LeadWorker.run``): blocking kafka-python calls in
  ``asyncio.to_thread``, not given up at a stop and waited for at exit (58 s and 28 s, then exit 1);
- the producer's start: not given up at a stop, it waited 40 s for a bootstrap answer and failed (38 s,
  exit 1, "cannot reach the Kafka broker");
- the group join was already given up at a stop (``start_unless_stopped``, 0.3 s): covered so that it
  stays so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.broker import free_port
from tests.faults.pausing_proxy import hung_broker, sigterm_stops_in_time
from tests.processes import CliProcess, leadpulse_env, wait_until

pytestmark = pytest.mark.faults

READING_ERASURES = "worker stopped while reading the erasure log"


@pytest.mark.parametrize(
    ("client", "nth", "where"),
    [
        (b"aiokafka-0", 1, READING_ERASURES),
        (b"kafka-python", 1, READING_ERASURES),  # the erasure topic's check
        (b"kafka-python", 2, READING_ERASURES),  # the erasure log's Tansu check
        (b"kafka-python", 3, "worker stopped before its topics were checked"),  # LeadWorker.run's topics
        (b"aiokafka-producer", 1, "worker stopped before its producer started"),
        (b"aiokafka-0", 2, "worker stopped before its first partition assignment"),
    ],
    ids=[
        "erasure-log-consumer",
        "erasure-log-topic-check",
        "erasure-log-tansu-check",
        "create-topics",
        "producer-start",
        "group-join",
    ],
)
def test_sigterm_while_the_broker_hangs_at_the_workers_start_exits_in_time(
    tmp_path: Path, client: bytes, nth: int, where: str
) -> None:
    with hung_broker(tmp_path, "hungstart.", client, nth) as hung:
        env = leadpulse_env(
            kafka_bootstrap=hung.address,
            topic_prefix="hungstart.",
            data_dir=tmp_path / "worker",
            web_port=free_port(),
        )
        proc = CliProcess(["worker"], env, tmp_path / "worker.log")
        try:
            step = f"the worker's connection {nth} of {client.decode()}"
            wait_until(hung.paused.is_set, 60, f"{step} (seen: {hung.proxy.clients})", proc)
            out = sigterm_stops_in_time(proc, step)
            assert where in out, out[-3000:]
        finally:
            proc.stop(timeout=5)
