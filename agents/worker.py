"""Faust wiring of the pure core: decode → stitch identity → score → stage → SLA → emit.

Shape, chosen from measurement (DESIGN §11: every table write is also a changelog record, and per-event
writes dominate): the agent takes events in batches, keeps the batch's lead states in a plain dict, runs
the pure core per event, and writes each touched lead **once per batch** to the single ``lead-state`` table.
The table uses the key partitioner (``use_partitioner=True``), so its changelog partition equals the input
partition without needing "the current event", which also lets the SLA scan write state from a timer.

Offsets: Faust acks a ``take_events`` batch after this code returns, and its commit flushes the producer
(outputs and changelog) before committing offsets, so offsets move only after the outputs are durable.
Outputs carry deterministic ids (transition_id, notification_id, timeout_id) so a replay after a crash is
dropped downstream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import EventT

from agents.core import Output, StepResult, check_timers, next_deadline, step
from agents.rules import Rules
from agents.state import LeadState
from schemas.registry import SchemaError, SchemaRegistry, default_registry
from streams.app import create_app
from streams.dlq import dead_letter
from streams.metrics import Metrics
from streams.producer import lead_key
from streams.settings import Settings
from streams.topics import BY_SCHEMA, DLQ, IDENTITY, INPUT_PARTITIONS, INPUTS

log = logging.getLogger(__name__)

IDENTITY_TOPIC = IDENTITY.name
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.05


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class BatchState:
    """Lead states touched by one batch, written back once each at the end."""

    states: dict[bytes, LeadState | None] = field(default_factory=dict)
    dirty: set[bytes] = field(default_factory=set)


class LeadWorker:
    """Declares the topology on a Faust app: one agent, one table, one timer."""

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        metrics: Metrics | None = None,
        registry: SchemaRegistry | None = None,
        scan_interval_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.metrics = metrics
        self.registry = registry or default_registry()
        self.app = app = create_app(settings)

        def raw_topic(*names: str) -> faust.TopicT:
            return app.topic(*names, key_serializer="raw", value_serializer="raw")

        self.identity_topic = raw_topic(settings.topic(IDENTITY_TOPIC))
        self.inputs = raw_topic(*[settings.topic(s.name) for s in INPUTS], settings.topic(IDENTITY_TOPIC))
        self.outputs = {
            schema: raw_topic(settings.topic(spec.name))
            for schema, spec in BY_SCHEMA.items()
            if spec.role == "output"
        }
        self.dlq = raw_topic(settings.topic(DLQ.name))
        self.table = app.Table(
            "lead-state",
            default=None,
            partitions=INPUT_PARTITIONS,
            use_partitioner=True,
            key_type=bytes,
            value_type=bytes,
        )
        self.lock = asyncio.Lock()
        self.deadlines: dict[bytes, int] = {}  # key -> next timer due (wall clock ms), rebuilt on assignment
        self.deadlines_stale = True
        self.ops_runner: Any = None
        # Event-time watermark for the SLA scan: the newest event time seen and when (wall clock) it was.
        self.watermark_ms: int | None = None
        self.watermark_seen_at_ms = 0
        app.agent(self.inputs, name="leads")(self._agent)
        app.timer(interval=scan_interval_s)(self._scan)
        app.on_partitions_assigned.connect(self._on_assigned)

    # -- the stream ------------------------------------------------------------------------------------

    async def _agent(self, stream: faust.StreamT[Any]) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):  # type: ignore[attr-defined]
            async with self.lock:
                await self.process_batch(events)

    async def process_batch(self, events: Iterable[EventT[Any]]) -> None:
        batch = BatchState()
        now = now_ms()
        for event in events:
            message = event.message
            topic = message.topic
            if self.metrics:
                self.metrics.events_consumed.labels(topic=self._unprefixed(topic)).inc()
            try:
                schema, record = self.registry.decode(message.value or b"")
            except SchemaError as exc:
                await self._dead_letter(message, "decode", exc)
                continue
            event_time = record.get("event_time")
            if isinstance(event_time, int) and (self.watermark_ms is None or event_time > self.watermark_ms):
                self.watermark_ms, self.watermark_seen_at_ms = event_time, now
            key = message.key or (lead_key(record) or "").encode()
            if not key:
                await self._dead_letter(
                    message,
                    "validate",
                    ValueError(
                        "lead_id: one of lead_id or anonymous_id is required (record has neither and no key)"
                    ),
                )
                continue
            state = self._get(batch, key)
            try:
                result = step(state, key.decode(), schema, record, self.rules, now)
            except Exception as exc:  # a bug or a record the core rejects must not stop the partition
                log.exception("core rejected %s[%s]@%s", topic, message.partition, message.offset)
                await self._dead_letter(message, "process", exc)
                continue
            await self._apply(batch, key, result)
            if self.metrics and message.timestamp:
                self.metrics.event_to_score_seconds.observe(max(0.0, time.time() - message.timestamp))
        await self._durable_outputs_then_write_back(batch)

    def _get(self, batch: BatchState, key: bytes) -> LeadState | None:
        if key not in batch.states:
            raw = self.table.get(key)
            batch.states[key] = LeadState.from_bytes(raw) if raw else None
        return batch.states[key]

    async def _apply(self, batch: BatchState, key: bytes, result: StepResult) -> None:
        batch.states[key] = result.state
        if result.changed:
            batch.dirty.add(key)
        for output in result.outputs:
            await self._emit(output)
        for forward in result.forwards:
            value = self.registry.encode(forward.schema, forward.event)
            await self.identity_topic.send(key=forward.key.encode(), value=value)

    async def _durable_outputs_then_write_back(self, batch: BatchState) -> None:
        """Outputs first, flushed; state after. A crash in between replays the batch and re-sends the same
        outputs (same deterministic ids, dropped downstream); the reverse order could store "seen" state
        whose outputs never reached the broker, losing them."""
        if batch.dirty:
            await self.app.producer.flush()
        self._write_back(batch)

    def _write_back(self, batch: BatchState) -> None:
        for key in batch.dirty:
            state = batch.states[key]
            if state is None:
                continue
            self.table[key] = state.to_bytes()
            due = next_deadline(state, self.rules)
            if due is None:
                self.deadlines.pop(key, None)
            else:
                self.deadlines[key] = due

    async def _emit(self, output: Output) -> None:
        topic = self.outputs[output.schema]
        await topic.send(key=output.key.encode(), value=self.registry.encode(output.schema, output.record))
        if self.metrics:
            self._count(output)

    def _count(self, output: Output) -> None:
        assert self.metrics is not None
        record = output.record
        if output.schema == "lead_score":
            self.metrics.score_updates.inc()
        elif output.schema == "stage_transition":
            self.metrics.stage_transitions.labels(
                from_stage=record["from_stage"], to_stage=record["to_stage"]
            ).inc()
        elif output.schema == "hot_lead":
            self.metrics.hot_leads.inc()
        elif output.schema == "sla_timeout":
            self.metrics.sla_events.labels(sla=record["sla"], level=record["level"]).inc()

    async def _dead_letter(self, message: Any, stage: str, exc: BaseException) -> None:
        record = dead_letter(
            message.topic, message.partition, message.offset, message.key, message.value, stage, exc
        )
        await self.dlq.send(key=message.key, value=self.registry.encode("dead_letter", record))
        if self.metrics:
            topic = self._unprefixed(message.topic)
            self.metrics.dlq_records.labels(source_topic=topic, stage=stage).inc()
            self.metrics.events_invalid.labels(topic=topic, reason=type(exc).__name__).inc()

    def _unprefixed(self, topic: str) -> str:
        """Metric labels use catalogue names, so dashboards work whatever the prefix."""
        prefix = self.settings.topic_prefix
        return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic

    # -- timers ----------------------------------------------------------------------------------------

    async def _on_assigned(self, *args: Any, **kwargs: Any) -> None:
        self.deadlines_stale = True

    async def _scan(self) -> None:
        """Fire due SLA warnings/breaches and timed recycles; each fires once (the marker is in state)."""
        if self.app.rebalancing or self.app.in_recovery:
            return
        async with self.lock:
            now = self.timer_clock(now_ms())
            if self.deadlines_stale:
                self.deadlines = {}
                for key, raw in list(self.table.items()):
                    if raw:
                        due = next_deadline(LeadState.from_bytes(raw), self.rules)
                        if due is not None:
                            self.deadlines[key] = due
                self.deadlines_stale = False
            batch = BatchState()
            for key in [k for k, due in self.deadlines.items() if due <= now]:
                state = self._get(batch, key)
                if state is None:
                    self.deadlines.pop(key, None)
                    continue
                await self._apply(batch, key, check_timers(state, self.rules, now))
            await self._durable_outputs_then_write_back(batch)

    def timer_clock(self, wall_ms: int) -> int:
        """The time SLA deadlines are compared with: the wall clock, held back while a backlog of older events
        is being processed (a replay or catch-up), so that a follow-up still in the backlog is not reported as
        missed. Live, the newest event time tracks the wall clock and this is just ``wall_ms``; with no events
        the held-back clock advances with the wall clock from the newest event seen."""
        if self.watermark_ms is None:
            return wall_ms
        return min(wall_ms, self.watermark_ms + (wall_ms - self.watermark_seen_at_ms))

    def ready(self) -> tuple[bool, dict[str, Any]]:
        assigned = len(self.app.consumer.assignment()) if self.app.consumer else 0
        ok = (
            not self.app.rebalancing
            and not self.app.in_recovery
            and self.app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        )
        return ok, {
            "rebalancing": self.app.rebalancing,
            "in_recovery": self.app.in_recovery,
            "assigned_partitions": assigned,
        }


def build_worker(settings: Settings, rules: Rules, metrics: Metrics) -> LeadWorker:
    """The worker plus a task serving /metrics, /health and /ready on the web host/port."""
    from streams.web import start_ops_server

    worker = LeadWorker(settings, rules, metrics)

    @worker.app.task  # type: ignore[untyped-decorator]
    async def serve_ops() -> None:
        worker.ops_runner = await start_ops_server(
            settings.web_host, settings.web_port, metrics.registry, worker.ready
        )
        log.info(
            "ops endpoints on http://%s:%s (/metrics /health /ready)", settings.web_host, settings.web_port
        )

    return worker


def run_worker(settings: Settings, rules: Rules, loglevel: str = "info") -> None:
    """Run until SIGINT/SIGTERM (Faust's worker handles both and shuts down cleanly)."""
    from prometheus_client import CollectorRegistry

    worker = build_worker(
        settings, rules, Metrics(CollectorRegistry(), component="worker", process_metrics=True)
    )
    faust_worker = faust.Worker(worker.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    # Faust's terminal spinner sets the root logger to DEBUG below INFO, making every aiokafka debug call
    # build a log record (measured: ~13% of a worker's CPU at LEADPULSE_LOG_LEVEL=WARNING).
    faust_worker.spinner = None
    faust_worker.execute_from_commandline()
