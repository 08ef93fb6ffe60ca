"""SIGTERM while the broker hangs during the sink's start: ``leadpulse sink`` exits 0 within the 25 s the
other processes are given (tests/faults/test_shutdown_broker_hung.py), at each step of its start.

As tests/faults/test_worker_start_broker_hung.py: a proxy in front of a private Tansu pauses it (SIGSTOP)
when the ``nth`` connection of a client comes in. The sink's connections, in order: the erasure log's
consumer (``aiokafka-0…``), its topic check and Tansu check (kafka-python, 1 and 2), then the sink's group
consumer (``aiokafka-0…``, 2)."""

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

STOP_WITHIN_S = 25.0  # as tests/faults/test_shutdown_broker_hung.py


@pytest.mark.parametrize(
    ("client", "nth"),
    [(b"aiokafka-0", 1), (b"kafka-python", 1), (b"kafka-python", 2), (b"aiokafka-0", 2)],
    ids=["erasure-log-consumer", "erasure-log-topic-check", "erasure-log-tansu-check", "group-join"],
)
def test_sigterm_while_the_broker_hangs_at_the_sinks_start_exits_in_time(
    tmp_path: Path, client: bytes, nth: int
) -> None:
    broker = EmbeddedBroker(tansu_binary(load_settings()), "127.0.0.1", free_port(), tmp_path / "tansu.log")
    broker.start()
    assert broker.process is not None
    tansu_pid = broker.process.pid
    prefix = "hungsink."
    create_topics(broker.bootstrap, prefix)
    pause = lambda: os.kill(tansu_pid, signal.SIGSTOP)  # noqa: E731
    proxy = PausingProxy((broker.host, broker.port), pause, client, nth).start()
    env = leadpulse_env(
        kafka_bootstrap=proxy.address, topic_prefix=prefix, data_dir=tmp_path / "sink", sink_port=free_port()
    )
    proc = CliProcess(["sink"], env, tmp_path / "sink.log")
    try:
        step = f"the sink's connection {nth} of {client.decode()}"
        wait_until(proxy.paused.is_set, 90, f"{step} (seen: {proxy.clients})", proc)
        time.sleep(2)  # the step is under way, waiting for an answer
        assert proc.proc.poll() is None, f"the sink exited when the broker hung:\n{proc.output()[-3000:]}"
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.proc.wait(90)
        took = time.monotonic() - started
        out = proc.output()
        print(f"\nsink stop time with the broker hung at {step}: {took:.1f} s")
        assert proc.proc.returncode is not None, f"still running 90 s after SIGTERM:\n{out[-3000:]}"
        assert proc.proc.returncode == 0, f"exited with {proc.proc.returncode}:\n{out[-3000:]}"
        assert took < STOP_WITHIN_S, f"took {took:.1f}s to stop:\n{out[-3000:]}"
        for bad in ("Traceback", "Unclosed", "CancelledError"):
            assert bad not in out, f"{bad!r} in its output:\n{out[-4000:]}"
    finally:
        if proxy.paused.is_set():
            os.kill(tansu_pid, signal.SIGCONT)
        proc.stop(timeout=5)
        proxy.stop()
        broker.stop()
