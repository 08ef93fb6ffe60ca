"""The naive Faust shape of the same rules, kept only as the benchmark's baseline.

What a first Faust implementation looks like: a plain per-event ``async for`` agent and one table per
concern (score, stage, SLA, seen event ids), each written once per event. Every table write is also a
changelog record (DESIGN §11), so this pays four reads, four JSON encodings and four changelog records per
event where ``agents/worker.py`` pays one table write per lead per batch.

The rules are identical by construction: each event's state is reassembled from the four tables into a
``LeadState`` and run through the same pure ``agents.core.step``; outputs and identity forwards go to the
same topics. Not built here: the SLA timer scan (it runs off the per-event path, and writing the default-
partitioned tables from a timer is impossible in Faust), so ``sla_timeout`` records are not emitted.

Run (the bench does this in a subprocess): ``python -m bench.naive_worker`` with the worker's LEADPULSE_*
environment; it serves /metrics, /health and /ready on LEADPULSE_WEB_PORT like the real worker.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import faust

from agents.core import StepResult, step
from agents.rules import Rules, load_rules
from agents.state import LeadState
from schemas.errors import SchemaError
from schemas.registry import SchemaRegistry, default_registry
from streams.app import create_app
from streams.gc_tuning import tune_gc
from streams.metrics import Metrics
from streams.producer import lead_key
from streams.settings import Settings, load_settings
from streams.topics import BY_SCHEMA, IDENTITY, INPUT_PARTITIONS, INPUTS

log = logging.getLogger(__name__)

# LeadState.to_dict() keys, split by concern: one table each.
CONCERNS: dict[str, tuple[str, ...]] = {
    "score": (
        "profile",
        "profile_at",
        "profile_event_id",
        "fit",
        "dq",
        "acc",
        "since",
        "caps",
        "signals",
        "last_score",
        "last_as_of",
    ),
    "stage": (
        "key",
        "lead_id",
        "aliases",
        "stage",
        "stage_at",
        "seq",
        "mql_at",
        "last_sales_at",
        "owner",
        "merged_into",
        "buffer",
    ),
    "sla": ("timers",),
    "seen": ("seen", "evicted_to", "max_time"),
}


def split_state(state: LeadState) -> dict[str, bytes]:
    """One JSON value per concern table."""
    whole = state.to_dict()
    return {
        concern: json.dumps({k: whole[k] for k in keys}, separators=(",", ":")).encode()
        for concern, keys in CONCERNS.items()
    }


def join_state(parts: dict[str, bytes | None]) -> LeadState | None:
    """The state reassembled from the concern tables (None = a key never seen)."""
    if parts.get("stage") is None:
        return None
    whole: dict[str, Any] = {}
    for raw in parts.values():
        if raw:
            whole.update(json.loads(raw))
    return LeadState.from_dict(whole)


class NaiveWorker:
    """One agent, four tables, one write per table per event."""

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        metrics: Metrics | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.metrics = metrics
        self.registry = registry or default_registry()
        self.app = app = create_app(settings, app_id="leadpulse-naive")

        def raw_topic(*names: str) -> faust.TopicT:
            return app.topic(*names, key_serializer="raw", value_serializer="raw")

        self.identity_topic = raw_topic(settings.topic(IDENTITY.name))
        self.inputs = raw_topic(*[settings.topic(s.name) for s in INPUTS], settings.topic(IDENTITY.name))
        self.outputs = {
            schema: raw_topic(settings.topic(spec.name))
            for schema, spec in BY_SCHEMA.items()
            if spec.role == "output"
        }
        self.tables = {
            concern: app.Table(
                f"naive-{concern}",
                default=None,
                partitions=INPUT_PARTITIONS,
                key_type=bytes,
                value_type=bytes,
            )
            for concern in CONCERNS
        }
        app.agent(self.inputs, name="naive-leads")(self._agent)

    async def _agent(self, stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            message = event.message
            if self.metrics:
                self.metrics.events_consumed.labels(topic=self._unprefixed(message.topic)).inc()
            try:
                schema, record = self.registry.decode(message.value or b"")
            except SchemaError:
                log.warning("undecodable %s[%s]@%s skipped", message.topic, message.partition, message.offset)
                continue
            key = message.key or (lead_key(record) or "").encode()
            state = join_state({concern: table.get(key) for concern, table in self.tables.items()})
            now = int(time.time() * 1000)
            received = int(message.timestamp * 1000) if message.timestamp else None  # Faust: seconds
            result = step(state, key.decode(), schema, record, self.rules, now, received)
            await self._send(key, result)
            if result.changed:
                for concern, value in split_state(result.state).items():
                    self.tables[concern][key] = value

    def _unprefixed(self, topic: str) -> str:
        prefix = self.settings.topic_prefix
        return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic

    async def _send(self, key: bytes, result: StepResult) -> None:
        for output in result.outputs:
            value = self.registry.encode(output.schema, output.record)
            await self.outputs[output.schema].send(key=output.key.encode(), value=value)
        for forward in result.forwards:
            value = self.registry.encode(forward.schema, forward.event)
            await self.identity_topic.send(key=forward.key.encode(), value=value)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        recovered = self.app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        ok = not self.app.rebalancing and recovered
        return ok, {"rebalancing": self.app.rebalancing}


def main() -> None:
    from prometheus_client import CollectorRegistry

    from streams.web import start_ops_server

    settings = load_settings()
    logging.basicConfig(level=settings.log_level)
    metrics = Metrics(CollectorRegistry(), component="naive-worker", process_metrics=True)
    tune_gc()  # the same GC settings as the real worker, so the comparison measures the design only
    worker = NaiveWorker(settings, load_rules(settings.rules), metrics)

    @worker.app.task  # type: ignore[untyped-decorator]
    async def serve_ops() -> None:
        await start_ops_server(settings.web_host, settings.web_port, metrics.registry, worker.ready)

    faust.Worker(
        worker.app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


if __name__ == "__main__":
    main()
