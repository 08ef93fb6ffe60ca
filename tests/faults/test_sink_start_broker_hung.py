"""SIGTERM while the broker hangs during the sink's start: ``leadpulse sink`` exits 0 within the 25 s the
other processes are given (tests/faults/test_shutdown_broker_hung.py), at each step of its start.

As tests/faults/test_worker_start_broker_hung.py: a proxy in front of a private Tansu pauses it (SIGSTOP)
when the ``nth`` connection of a client comes in. The sink's connections, in order: the erasure log's
consumer (``aiokafka-0…``), its topic check and Tansu check (kafka-python, 1 and 2), then the sink's group
consumer (``aiokafka-0…``, 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.broker import free_port
from tests.faults.pausing_proxy import hung_broker, sigterm_stops_in_time
from tests.processes import CliProcess, leadpulse_env, wait_until

pytestmark = pytest.mark.faults


@pytest.mark.parametrize(
    ("client", "nth"),
    [(b"aiokafka-0", 1), (b"kafka-python", 1), (b"kafka-python", 2), (b"aiokafka-0", 2)],
    ids=["erasure-log-consumer", "erasure-log-topic-check", "erasure-log-tansu-check", "group-join"],
)
def test_sigterm_while_the_broker_hangs_at_the_sinks_start_exits_in_time(
    tmp_path: Path, client: bytes, nth: int
) -> None:
    with hung_broker(tmp_path, "hungsink.", client, nth) as hung:
        env = leadpulse_env(
            kafka_bootstrap=hung.address,
            topic_prefix="hungsink.",
            data_dir=tmp_path / "sink",
            sink_port=free_port(),
        )
        proc = CliProcess(["sink"], env, tmp_path / "sink.log")
        try:
            step = f"the sink's connection {nth} of {client.decode()}"
            wait_until(hung.paused.is_set, 90, f"{step} (seen: {hung.proxy.clients})", proc)
            out = sigterm_stops_in_time(proc, step)
            if nth == 1 or client == b"kafka-python":
                assert "sink stopped while reading the erasure log" in out, out[-3000:]
        finally:
            proc.stop(timeout=5)
