"""SIGTERM while the broker hangs during the notifier's start: ``leadpulse notifier`` exits 0 within the
25 s the other processes are given (tests/faults/test_shutdown_broker_hung.py), at each step of its start.

How a step is hit: the notifier is pointed at a proxy in front of a private Tansu, and the proxy pauses
Tansu (SIGSTOP) when the ``nth`` connection of a client (kafka-python or aiokafka, told by the client id in
the request header) comes in. The steps before it have finished, so the process is where a broker hanging at
that moment leaves it. The steps, with what they did before stop 28:

- the erasure log's topic check (``streams.erasures.ErasureLog.start``): two blocking kafka-python calls in
  ``asyncio.to_thread``, each waiting up to 30 s for a bootstrap answer. A stop cancelled the wait but not
  the thread, and ``asyncio.run`` waits for its executor's threads at exit: SIGTERM took 28 s.
- the producer's start (``Notifier._run``): not given up at a stop, it waited 40 s for a bootstrap answer and
  failed; SIGTERM took 38 s and the notifier exited 1, "cannot reach the Kafka broker".
- the erasure log's consumer start and the consumer's group join were already given up at a stop
  (``finished_before_stop``, ``start_unless_stopped``): covered so that they stay so.
"""

from __future__ import annotations

import contextlib
import json
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

#: As tests/faults/test_shutdown_broker_hung.py: under the notifier's 30 s grace period.
STOP_WITHIN_S = 25.0


@pytest.mark.parametrize(
    ("client", "nth", "where"),
    [
        # the erasure log's consumer, its first client
        (b"aiokafka", 1, "notifier stopped while reading the erasure log"),
        # the erasure log's topic check (kafka-python, in a thread)
        (b"kafka-python", 1, "notifier stopped while reading the erasure log"),
        # the dead-letter producer's start (aiokafka: the erasure log's consumer bootstrapped first)
        (b"aiokafka", 2, "notifier stopped before its producer started"),
        # the consumer's group join
        (b"aiokafka", 3, "notifier stopped before its first partition assignment"),
    ],
    ids=["erasure-log-consumer", "erasure-log-topic-check", "producer-start", "group-join"],
)
def test_sigterm_while_the_broker_hangs_at_the_notifiers_start_exits_in_time(
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
        data_dir=tmp_path / "notifier",
        notifier_port=free_port(),
        webhook_urls=json.dumps([f"http://127.0.0.1:{free_port()}/hook"]),
        webhook_secret="s3cret-for-test-0123456789abcdef",
    )
    proc = CliProcess(["notifier"], env, tmp_path / "notifier.log")
    try:
        wait_until(proxy.paused.is_set, 60, "the notifier's first kafka-python request", proc)
        time.sleep(2)  # the blocking call is under way, waiting for an answer
        assert proc.proc.poll() is None, f"the notifier exited when the broker hung:\n{proc.output()[-3000:]}"
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.proc.wait(90)
        took = time.monotonic() - started
        out = proc.output()
        print(f"\nnotifier stop time with the broker hung during its start: {took:.1f} s")
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
