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

import json
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.faults.pausing_proxy import hung_broker, sigterm_stops_in_time
from tests.processes import CliProcess, leadpulse_env, wait_until

pytestmark = pytest.mark.faults


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
    with hung_broker(tmp_path, "hungstart.", client, nth) as hung:
        env = leadpulse_env(
            kafka_bootstrap=hung.address,
            topic_prefix="hungstart.",
            data_dir=tmp_path / "notifier",
            notifier_port=free_port(),
            webhook_urls=json.dumps([f"http://127.0.0.1:{free_port()}/hook"]),
            webhook_secret="s3cret-for-test-0123456789abcdef",
        )
        proc = CliProcess(["notifier"], env, tmp_path / "notifier.log")
        try:
            step = f"the notifier's connection {nth} of {client.decode()}"
            wait_until(hung.paused.is_set, 60, f"{step} (seen: {hung.proxy.clients})", proc)
            out = sigterm_stops_in_time(proc, step)
            assert where in out, out[-3000:]
        finally:
            proc.stop(timeout=5)
