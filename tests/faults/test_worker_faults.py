"""Fault 1: the worker killed mid-batch, and a rebalance as a second worker joins and leaves (1 → 2 → 1).

Pass criteria (issue #8): every transition, hot lead and SLA event the oracle (the pure core over the same
input log) emits is on the output topics, each id once after dedup (a repeat must be the identical record),
every lead's final state in the changelog equals the oracle's, nothing is dead-lettered, and no worker exits.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from agents.state import LeadState
from leadpulse.live_view import scrape, total
from schemas.registry import default_registry
from streams.broker import EmbeddedBroker
from streams.producer import Producer
from streams.reader import Decoded
from streams.settings import Settings
from tests.faults.oracle import read_decoded, read_raw
from tests.integration.test_worker import ID_FIELD, _history, _oracle, assert_emitted_once, ids, start_worker
from tests.processes import CliProcess, wait_until

pytestmark = pytest.mark.faults


def _encode(events: list[dict[str, Any]]) -> list[bytes]:
    registry = default_registry()
    return [registry.encode("web_visit", registry.validate("web_visit", e)) for e in events]


def _produce(settings: Settings, events: list[dict[str, Any]]) -> None:
    topic = settings.topic("events.web_visits")
    with Producer(settings) as producer:
        for value, event in zip(_encode(events), events, strict=True):
            producer.send_encoded(topic, event["lead_id"], value)


def outputs(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """The worker's output topics and the DLQ by schema, as tests/integration/test_worker.py's ``outputs``
    reads them, with one consumer for the six topics (``read_decoded``: ~1 s a read instead of ~5 s)."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    topics = ("leads.scores", "leads.stage_transitions", "leads.hot", "leads.sla_timeouts", "accounts.scores")
    for item in read_decoded(settings, [settings.topic(t) for t in (*topics, "dlq")]):
        assert isinstance(item, Decoded), item
        found[item.schema].append(item.record)
    return found


def _consumed(port: int) -> float:
    return total(scrape(f"http://127.0.0.1:{port}/metrics"), "leadpulse_events_consumed_total")


def _check_against_oracle(settings: Settings, oracle: dict[str, Any]) -> None:
    out = outputs(settings)
    assert_emitted_once(out, oracle)
    assert out.get("dead_letter", []) == []
    stored: dict[str, LeadState] = {}
    # the whole changelog to its end (test_worker.raw_messages read it until 3 s without a record)
    for message in read_raw(settings, [settings.topic("leadpulse.internal.lead_state")]):
        if message.value is not None:
            stored[message.key.decode()] = LeadState.from_bytes(message.value)
    for lead, state in oracle["states"].items():
        assert state is not None
        assert stored[lead].seen == state.seen, lead
        assert stored[lead].stage == state.stage, lead
        assert stored[lead].last_score == pytest.approx(state.last_score), lead


def _missing(settings: Settings, oracle: dict[str, Any]) -> dict[str, list[str]]:
    out = outputs(settings)
    return {s: sorted(oracle["emitted"][s] - set(ids(out[s], s))) for s in ID_FIELD}


def _wait_settled(settings: Settings, oracle: dict[str, Any], what: str, worker: CliProcess) -> None:
    """Wait for every output the oracle emits; on timeout, say which are missing (the first few of each)."""
    try:
        wait_until(lambda: not any(_missing(settings, oracle).values()), 120, what, worker)
    except AssertionError as exc:
        missing = {s: (len(m), m[:5]) for s, m in _missing(settings, oracle).items() if m}
        raise AssertionError(f"missing outputs {missing}\n{exc}") from None


def test_worker_killed_mid_batch_recovers_with_outputs_and_state_equal_to_the_oracle(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    events = _history(21, now, 600)
    oracle = _oracle(events, now)
    _produce(broker_settings, events)  # a backlog, so the kill lands inside a batch
    worker, port = start_worker(broker_settings, broker, tmp_path / "worker1.log")
    wait_until(lambda: _consumed(port) >= len(events) // 3, 90, "a third consumed", worker)
    worker.kill9()
    killed_at = time.monotonic()
    worker, port = start_worker(broker_settings, broker, tmp_path / "worker2.log")
    try:
        _wait_settled(broker_settings, oracle, "outputs after restart", worker)
        recovered = time.monotonic() - killed_at
        print(f"\nworker kill -9 mid-batch: all outputs present {recovered:.1f} s after the kill")
        time.sleep(2)
        _check_against_oracle(broker_settings, oracle)
        assert worker.proc.poll() is None, worker.output()[-2000:]
    finally:
        worker.stop()


def test_second_worker_joining_and_leaving_loses_and_duplicates_nothing(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    events = _history(22, now, 400)
    oracle = _oracle(events, now)
    third = len(events) // 3
    # per-lead order must survive the split: _history numbers each lead's events in list order
    first, second, rest = events[:third], events[third : 2 * third], events[2 * third :]
    worker_a, port_a = start_worker(broker_settings, broker, tmp_path / "a.log")
    workers: list[CliProcess] = [worker_a]
    try:
        _produce(broker_settings, first)
        wait_until(lambda: _consumed(port_a) >= len(first), 90, "first third on one worker", worker_a)
        worker_b, port_b = start_worker(broker_settings, broker, tmp_path / "b.log")  # 1 → 2
        workers.append(worker_b)
        _produce(broker_settings, second)
        wait_until(
            lambda: _consumed(port_a) + _consumed(port_b) >= len(first) + len(second),
            90,
            "second third on two workers",
            worker_b,
        )
        assert _consumed(port_b) > 0, "the second worker got no partitions"
        _produce(broker_settings, rest)
        left_at = time.monotonic()
        assert worker_b.stop() == 0, worker_b.output()[-2000:]  # 2 → 1 while the last third flows
        _wait_settled(broker_settings, oracle, "outputs after scale-in", worker_a)
        print(f"\nscale 2 -> 1: all outputs present {time.monotonic() - left_at:.1f} s after the leave")
        time.sleep(2)
        _check_against_oracle(broker_settings, oracle)
        assert worker_a.proc.poll() is None, worker_a.output()[-2000:]
    finally:
        for worker in workers:
            worker.stop()
