"""The worker's checkpoints (agents/worker_checkpoint.py) against the real broker: the states and offsets of
the batches since the last checkpoint are written together, each lead's state once, while the next batches
are scored; never before the batches' outputs are acknowledged, offsets never before their states, and what is
pending is written at a stop.

The state wave is held back by wrapping ``BatchSender.send`` (the broker itself is real): that is the only way
to make "the previous batch's states are still on their way" last long enough to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from agents import worker_records
from agents.kafka_batches import BatchSender, Record
from agents.rules import load_rules
from agents.state import LeadState
from agents.worker import LeadWorker
from agents.worker_clients import GROUP
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import raw_messages
from tests.integration.worker_harness import durable_states, running_worker, wait_until

pytestmark = pytest.mark.integration

HOLD_MAX_S = 30.0  # a held state wave goes on by itself after this: a failing test never hangs


def _visit(lead: str, at: int, name: str = "visit") -> dict[str, Any]:
    return {
        "event_id": f"{lead}-{name}",
        "event_time": at,
        "lead_id": lead,
        "source": "web",
        "url": "https://x.example/pricing",
        "page_category": "pricing",
    }


def _seen(worker: LeadWorker, lead: str, name: str = "visit") -> bool:
    """The lead's visit is in the worker's store: put there once the batch's outputs were acknowledged."""
    state = worker.store.get(lead.encode())
    return state is not None and f"{lead}-{name}" in state.seen


def _committed_visits(worker: LeadWorker, settings: Settings) -> int:
    """Records of the visits topic the worker committed past, over all partitions."""
    visits = settings.topic("events.web_visits")
    return sum(offset for tp, offset in worker.committed.items() if tp.topic == visits)


class StateWaves:
    """``BatchSender.send`` with each wave that writes lead states first told to ``started`` and held until
    ``release`` is set (or ``HOLD_MAX_S``, or a fixed ``delay_s``)."""

    def __init__(self, settings: Settings, monkeypatch: pytest.MonkeyPatch, delay_s: float | None = None):
        self.state_topic = settings.topic("leadpulse.internal.lead_state")
        self.delay_s = delay_s
        self.started: list[float] = []
        self.finished: list[float] = []
        self.release: asyncio.Event | None = None
        real_send = BatchSender.send
        waves = self

        async def send(sender: BatchSender, records: Sequence[Record]) -> None:
            if not any(topic == waves.state_topic for topic, *_ in records):
                await real_send(sender, records)
                return
            waves.started.append(time.monotonic())
            if waves.delay_s is not None:
                await asyncio.sleep(waves.delay_s)
            else:
                if waves.release is None:
                    waves.release = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waves.release.wait(), HOLD_MAX_S)
            await real_send(sender, records)
            waves.finished.append(time.monotonic())

        monkeypatch.setattr(BatchSender, "send", send)

    def held(self) -> bool:
        return len(self.started) > len(self.finished)


def test_a_batch_is_scored_while_the_previous_batchs_states_wait_on_the_broker_and_commits_keep_order(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lead A's batch has its outputs acknowledged and its state wave held; lead B's batch, fetched after,
    must still be scored (its outputs acknowledged, which puts it in the store). Serially, B waited for A's
    state wave and commit. Nothing may be committed past A's records while A's states are not written."""
    waves = StateWaves(broker_settings, monkeypatch)
    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
    now = int(time.time() * 1000)
    overlap: dict[str, object] = {}

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await wait_until(lambda: worker.ready()[0], running, seen=lambda: "worker never became ready")
            waves.release = asyncio.Event()
            try:
                with Producer(broker_settings) as producer:
                    producer.send("web_visit", _visit("L-a", now - 2_000))
                await wait_until(waves.held, running, timeout_s=20, seen=lambda: "A's state wave never came")
                assert _seen(worker, "L-a"), "A's state wave started before its outputs were acknowledged"
                with Producer(broker_settings) as producer:
                    producer.send("web_visit", _visit("L-b", now - 1_000))
                await wait_until(
                    lambda: _seen(worker, "L-b"),
                    running,
                    timeout_s=15,
                    seen=lambda: "B was not scored while A's state wave was held",
                )
                overlap["held"] = waves.held()
                overlap["committed"] = _committed_visits(worker, broker_settings)
            finally:
                waves.release.set()
            await wait_until(
                lambda: _committed_visits(worker, broker_settings) == 2,
                running,
                timeout_s=20,
                seen=lambda: f"committed {worker.committed}",
            )

    asyncio.run(scenario())
    assert overlap == {"held": True, "committed": 0}, overlap
    durable = durable_states(broker_settings)
    for lead in ("L-a", "L-b"):
        state = durable.get(lead.encode())
        assert state is not None and f"{lead}-visit" in state.seen, lead


def test_a_stop_writes_and_commits_what_the_last_batches_left_pending(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker is told to stop with a batch scored and its state not written yet (the checkpoint is not
    due), and with the state wave slow: the stop writes it and commits the batch, instead of leaving it to
    be processed again."""
    waves = StateWaves(broker_settings, monkeypatch, delay_s=1.0)
    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
    worker.commit_interval_s = 60.0
    now = int(time.time() * 1000)
    at_stop: dict[str, object] = {}

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await wait_until(lambda: worker.ready()[0], running, seen=lambda: "worker never became ready")
            with Producer(broker_settings) as producer:
                producer.send("web_visit", _visit("L-stop", now - 1_000))
            await wait_until(lambda: _seen(worker, "L-stop"), running, timeout_s=20)
            await asyncio.sleep(0.5)
            at_stop["waves"] = len(waves.started)
            at_stop["committed"] = _committed_visits(worker, broker_settings)

    asyncio.run(scenario())
    assert at_stop == {"waves": 0, "committed": 0}, at_stop
    assert _committed_visits(worker, broker_settings) == 1, worker.committed
    state = durable_states(broker_settings).get(b"L-stop")
    assert state is not None and "L-stop-visit" in state.seen


def test_a_lead_in_several_batches_between_checkpoints_is_written_once_with_all_of_them(
    broker_settings: Settings,
) -> None:
    """Three batches for one lead within a checkpoint interval: one changelog record holding all three
    visits (was one per batch: a busy lead's whole state re-written with every batch), and the offsets of
    all three committed with it."""
    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
    worker.commit_interval_s = 60.0
    now = int(time.time() * 1000)
    lead = "L-busy"
    names = ("one", "two", "three")
    between: dict[str, object] = {}

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await wait_until(lambda: worker.ready()[0], running, seen=lambda: "worker never became ready")
            for i, name in enumerate(names):
                with Producer(broker_settings) as producer:
                    producer.send("web_visit", _visit(lead, now - 10_000 + i, name))
                await wait_until(lambda name=name: _seen(worker, lead, name), running, timeout_s=20)
            between["committed"] = _committed_visits(worker, broker_settings)

    asyncio.run(scenario())
    assert between == {"committed": 0}, between
    assert _committed_visits(worker, broker_settings) == len(names), worker.committed
    changelog = broker_settings.topic("leadpulse.internal.lead_state")
    records = [m for m in raw_messages(broker_settings, changelog) if m.key == lead.encode()]
    assert len(records) == 1, [m.offset for m in records]
    state = LeadState.from_bytes(records[0].value)
    assert {f"{lead}-{name}" for name in names} <= set(state.seen)


def _hang_state_writes(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """``BatchSender.send`` that, once ``armed`` is set, never returns from a wave writing lead states (a
    broker that does not answer) and sets ``entered``."""
    real_send = BatchSender.send
    state_topic = settings.topic("leadpulse.internal.lead_state")
    hang = {"armed": False, "entered": False}

    async def send(sender: BatchSender, records: Sequence[Record]) -> None:
        if hang["armed"] and any(topic == state_topic for topic, *_ in records):
            hang["entered"] = True
            await asyncio.Event().wait()
        await real_send(sender, records)

    monkeypatch.setattr(BatchSender, "send", send)
    return hang


def test_a_stop_while_a_reload_writes_what_was_pending_to_a_hung_broker_is_not_held(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the core raises for makes the worker reload; first it writes what earlier batches left
    pending. With the broker not answering that write, a stop must still end the worker within seconds (it
    waited the producer's timeout, unbounded by the stop) and commit nothing past the unwritten states."""
    hang = _hang_state_writes(broker_settings, monkeypatch)
    real_step = worker_records.step

    def step_raising_for_boom(
        state: LeadState | None, key: str, schema: str, event: dict[str, Any], *args: Any
    ) -> Any:
        if event.get("event_id") == "L-boom-visit":
            raise RuntimeError("injected: the core fails for this event")
        return real_step(state, key, schema, event, *args)

    monkeypatch.setattr(worker_records, "step", step_raising_for_boom)
    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
    worker.commit_interval_s = 60.0
    now = int(time.time() * 1000)
    took: dict[str, float] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        try:
            await wait_until(lambda: worker.ready()[0], running, seen=lambda: "worker never became ready")
            with Producer(broker_settings) as producer:
                producer.send("web_visit", _visit("L-first", now - 2_000))
            await wait_until(lambda: _seen(worker, "L-first"), running, timeout_s=20)
            hang["armed"] = True
            with Producer(broker_settings) as producer:
                producer.send("web_visit", _visit("L-boom", now - 1_000))
            await wait_until(lambda: hang["entered"], running, timeout_s=20, seen=lambda: "no reload wrote")
        finally:
            started = time.monotonic()
            stop.set()
            await asyncio.wait_for(running, 20)
            took["stop"] = time.monotonic() - started

    asyncio.run(scenario())
    assert took["stop"] < 10, took
    assert _committed_visits(worker, broker_settings) == 0, worker.committed


def test_a_stop_while_a_revocation_writes_what_was_pending_to_a_hung_broker_is_not_held(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second member joins the group while a checkpoint is pending: the revocation writes it before the
    partitions move. With the broker not answering that write, a stop must still end the worker within
    seconds and commit nothing past the unwritten states (the reload's twin, above; this path had no test)."""
    hang = _hang_state_writes(broker_settings, monkeypatch)
    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=3600)
    worker.commit_interval_s = 60.0  # the first batch's states stay pending until the revocation
    now = int(time.time() * 1000)
    took: dict[str, float] = {}

    async def join(done: asyncio.Event) -> None:
        member = AIOKafkaConsumer(
            *worker.input_topics,
            bootstrap_servers=broker_settings.bootstrap,
            group_id=broker_settings.topic_prefix + GROUP,
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        await member.start()
        try:
            while not done.is_set():
                await member.getmany(timeout_ms=200)
        finally:
            await member.stop()

    async def scenario() -> None:
        stop, done = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        joining: asyncio.Task[None] | None = None
        try:
            await wait_until(lambda: worker.ready()[0], running, seen=lambda: "worker never became ready")
            with Producer(broker_settings) as producer:
                producer.send("web_visit", _visit("L-first", now - 2_000))
            await wait_until(lambda: _seen(worker, "L-first"), running, timeout_s=20)
            assert worker.checkpoint, "the first batch's states were not pending"
            hang["armed"] = True
            joining = asyncio.create_task(join(done))
            await wait_until(
                lambda: hang["entered"], running, timeout_s=40, seen=lambda: "no revocation wrote"
            )
        finally:
            started = time.monotonic()
            stop.set()
            await asyncio.wait_for(running, 20)
            took["stop"] = time.monotonic() - started
            done.set()
            if joining is not None:
                await asyncio.wait_for(joining, 20)

    asyncio.run(scenario())
    assert took["stop"] < 10, took
    assert _committed_visits(worker, broker_settings) == 0, worker.committed
    assert worker.gave_up_at_stop
