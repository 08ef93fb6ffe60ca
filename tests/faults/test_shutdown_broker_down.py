"""SIGTERM during a broker outage: every long-running process exits 0, promptly, without a traceback.

Why: an operator stops the fleet while Kafka is down (a maintenance window, a failed cluster). aiokafka's
``consumer.stop()`` then raised a stray ``CancelledError`` (aio-libs/aiokafka#647, see
``streams/kafka_close.py``): the worker and the sink died with a 40-line traceback, exit code 1 and
"Unclosed AIOKafkaConsumer", which looks like a crash to the orchestrator and to whoever reads the log.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streams.broker import create_topics, free_port, start_private_broker
from streams.settings import load_settings
from tests.processes import CliProcess, http_ok, pipeline_processes, wait_until

pytestmark = pytest.mark.faults


def _stop_cleanly(name: str, proc: CliProcess, within_s: float) -> str:
    """SIGTERM ``proc``: it exits 0 within ``within_s``, without a traceback or an unclosed client; returns
    its output."""
    started = time.monotonic()
    code = proc.stop(timeout=30)
    took = time.monotonic() - started
    out = proc.output()
    assert code == 0, f"{name} exited with {code} after SIGTERM:\n{out[-4000:]}"
    assert took < within_s, f"{name} took {took:.1f}s to stop:\n{out[-4000:]}"
    for bad in ("Traceback", "Unclosed", "CancelledError"):
        assert bad not in out, f"{name}: {bad!r} in its output:\n{out[-4000:]}"
    return out


def test_sigterm_while_the_broker_is_down_exits_cleanly(tmp_path: Path) -> None:
    broker = start_private_broker(tmp_path / "tansu.log")
    prefix = "down."
    create_topics(broker.bootstrap, prefix)
    ports = {name: free_port() for name in ("worker", "sink", "collector", "notifier")}
    procs = pipeline_processes(tmp_path, broker.bootstrap, prefix, ports)
    try:
        for name, proc in procs.items():
            url = f"http://127.0.0.1:{ports[name]}/ready"
            wait_until(lambda url=url: http_ok(url), 90, f"{name} ready", proc)  # type: ignore[misc]
        broker.stop()
        time.sleep(4)  # long enough for every consumer to fail a fetch and sit in its retry backoff
        for name, proc in procs.items():
            assert proc.proc.poll() is None, f"{name} exited when the broker went away:\n{proc.output()}"
        for name, proc in procs.items():
            _stop_cleanly(name, proc, 25)
    finally:
        for proc in procs.values():
            proc.stop(timeout=5)
        broker.stop()


@pytest.mark.parametrize("name", ["worker", "sink", "notifier"])
def test_sigterm_while_joining_the_group_after_the_broker_died_exits_promptly(
    name: str, tmp_path: Path
) -> None:
    """A subscribed consumer's start waits for its first assignment, for ever once the broker is gone: a
    process whose broker died while it joined its group (a Kafka restart during a rollout) ignored SIGTERM
    until SIGKILL; the worker was still running 10 min after it. Tansu answers a join after about half the
    6 s session timeout, so the broker is stopped just after the process says it is joining."""
    broker = start_private_broker(tmp_path / "tansu.log")
    prefix = "join."
    create_topics(broker.bootstrap, prefix)
    port = free_port()
    proc = pipeline_processes(tmp_path, broker.bootstrap, prefix, {name: port})[name]
    try:
        wait_until(lambda: "joining consumer group" in proc.output(), 90, f"{name} joining", proc)
        broker.stop()
        assert not http_ok(f"http://127.0.0.1:{port}/ready"), "assigned before the broker stopped"
        time.sleep(1)
        out = _stop_cleanly(name, proc, 15)
        assert "before its first partition assignment" in out, out[-4000:]
    finally:
        proc.stop(timeout=5)
        broker.stop()


#: Per process: (metric that says it is busy, how much of it before the broker is killed, stop bound, the
#: line its stop logs when writes or commits were given up).
BUSY = {
    "worker": ("leadpulse_events_consumed_total", 5_000, 9.0, "given up"),
    "sink": ("leadpulse_sink_rows_total", 10_000, 12.0, "the stop's last commit tries again"),
}


@pytest.mark.parametrize("name", sorted(BUSY))
def test_sigterm_to_a_process_busy_with_a_backlog_after_its_broker_was_killed_exits_promptly(
    name: str, tmp_path: Path
) -> None:
    """The broker ``kill -9``ed while the worker or the sink works through a backlog: nothing it sends can
    be acknowledged any more.

    - The worker gives up its writes in flight after ``STOP_GRACE_S`` (uncommitted: processed again after
      the restart), then waited for exactly those records in its producer's close, within the close's
      general 10 s bound: 13.5 s in all. It now gives the producer ``PRODUCER_STOP_S`` (every send was
      awaited or given up by then), and its last line says the writes were given up, not that the batch
      finished.
    - The sink waited for the commit in flight (10 s), then for its drain's commit (10 s more): 20.6 s. The
      commit in flight now gives way to the stop, and the stop's commit waits ``STOP_COMMIT_TIMEOUT_S``."""
    from bench.worker_harness import produce
    from bench.workload import Workload, encode
    from leadpulse.live_view import scrape, total
    from schemas.registry import default_registry

    metric, threshold, bound_s, given_up = BUSY[name]
    broker = start_private_broker(tmp_path / "tansu.log")
    prefix = "busy."
    create_topics(broker.bootstrap, prefix)
    settings = load_settings().model_copy(
        update={"kafka_bootstrap": broker.bootstrap, "topic_prefix": prefix}
    )
    events = 120_000
    produced = produce(
        settings, encode(Workload(seed=3, expected_events=events).take(events), default_registry())
    )
    assert produced == events
    port = free_port()
    proc = pipeline_processes(tmp_path, broker.bootstrap, prefix, {name: port})[name]
    try:

        def busy() -> bool:
            done = total(scrape(f"http://127.0.0.1:{port}/metrics"), metric)
            assert done < events, f"{name}: the backlog was done before the broker could be killed"
            return done >= threshold

        wait_until(busy, 90, f"{name} busy with the backlog", proc)
        assert broker.process is not None
        broker.process.kill()  # kill -9: connections refused from now on, nothing acknowledged
        broker.process.wait()
        time.sleep(0.5)
        out = _stop_cleanly(name, proc, bound_s)
        assert given_up in out, out[-4000:]
        assert "the batch in flight finished" not in out, out[-4000:]
    finally:
        proc.stop(timeout=5)
        broker.stop()
