"""SIGTERM while the broker hangs during the worker's start: ``leadpulse worker`` exits 0 within the 25 s the
other processes are given (tests/faults/test_shutdown_broker_hung.py), at each step of its start.

How a step is hit: as tests/faults/test_notifier_start_broker_hung.py, a proxy in front of a private Tansu
pauses it (SIGSTOP) when the ``nth`` connection of a client comes in. The worker's connections, in order:
the erasure log's consumer (``aiokafka-0…``), its topic check and Tansu check (kafka-python, 1 and 2), the
worker's Tansu check and topic creation (kafka-python, 3 and 4), its producer (``aiokafka-producer``), its
group consumer (``aiokafka-0…``, 2). What each did before stop 28 (measured with this test):

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

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, create_topics, free_port, tansu_binary
from streams.settings import load_settings
from tests.faults.pausing_proxy import PausingProxy
from tests.processes import CliProcess, leadpulse_env, wait_until

pytestmark = pytest.mark.faults

#: As tests/faults/test_shutdown_broker_hung.py: under the shortest grace period (30 s).
STOP_WITHIN_S = 25.0
READING_ERASURES = "worker stopped while reading the erasure log"


@pytest.mark.parametrize(
    ("client", "nth", "where"),
    [
        (b"aiokafka-0", 1, READING_ERASURES),
        (b"kafka-python", 1, READING_ERASURES),  # the erasure topic's check
        (b"kafka-python", 2, READING_ERASURES),  # the erasure log's Tansu check
        (b"kafka-python", 3, "worker stopped before its topics were checked"),  # LeadWorker.run's Tansu check
        (b"kafka-python", 4, "worker stopped before its topics were checked"),  # its topic creation
        (b"aiokafka-producer", 1, "worker stopped before its producer started"),
        (b"aiokafka-0", 2, "worker stopped before its first partition assignment"),
    ],
    ids=[
        "erasure-log-consumer",
        "erasure-log-topic-check",
        "erasure-log-tansu-check",
        "tansu-check",
        "create-topics",
        "producer-start",
        "group-join",
    ],
)
def test_sigterm_while_the_broker_hangs_at_the_workers_start_exits_in_time(
    tmp_path: Path, client: bytes, nth: int, where: str
) -> None:
    broker = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", free_port(), tmp_path / "tansu.log")
    broker.start()
    assert broker.process is not None
    tansu_pid = broker.process.pid
    prefix = "hungstart."
    create_topics(broker.bootstrap, prefix)
    pause = lambda: os.kill(tansu_pid, signal.SIGSTOP)  # noqa: E731
    proxy = PausingProxy((broker.host, broker.port), pause, client, nth).start()
    env = leadpulse_env(
        kafka_bootstrap=proxy.address,
        topic_prefix=prefix,
        data_dir=tmp_path / "worker",
        web_port=free_port(),
    )
    proc = CliProcess(["worker"], env, tmp_path / "worker.log")
    try:
        step = f"the worker's connection {nth} of {client.decode()}"
        wait_until(proxy.paused.is_set, 60, f"{step} (seen: {proxy.clients})", proc)
        time.sleep(2)  # the step is under way, waiting for an answer
        assert proc.proc.poll() is None, f"the worker exited when the broker hung:\n{proc.output()[-3000:]}"
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.proc.wait(90)
        took = time.monotonic() - started
        out = proc.output()
        print(f"\nworker stop time with the broker hung at {step}: {took:.1f} s")
        assert proc.proc.returncode is not None, f"still running 90 s after SIGTERM:\n{out[-3000:]}"
        assert proc.proc.returncode == 0, f"exited with {proc.proc.returncode}:\n{out[-3000:]}"
        assert took < STOP_WITHIN_S, f"took {took:.1f}s to stop:\n{out[-3000:]}"
        assert where in out, out[-3000:]
        for bad in ("Traceback", "Unclosed", "CancelledError"):
            assert bad not in out, f"{bad!r} in its output:\n{out[-4000:]}"
    finally:
        if proxy.paused.is_set():
            os.kill(tansu_pid, signal.SIGCONT)
        proc.stop(timeout=5)
        proxy.stop()
        broker.stop()
