"""What one worker batch produced, and how it becomes durable: two acknowledged waves, outputs first, then
state (the worker commits the batch's offsets only after both).

Why its own module: the per-event path (``agents/worker.py``) only fills a ``Batch``; the order of the writes
that makes a crash repeat work instead of losing it lives here, once, for batches, SLA scans and erasures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from agents.account import AccountState, account_score_record
from agents.core import next_deadline
from agents.kafka_batches import Record
from agents.lead_store import due_header
from agents.outputs import Output
from agents.state import LeadState
from agents.worker_clock import now_ms
from streams.metrics import observe_many

if TYPE_CHECKING:
    from agents.worker import LeadWorker


@dataclass
class Batch:
    """What one batch produced, sent in two acknowledged waves: outputs first, then state."""

    states: dict[bytes, LeadState | None] = field(default_factory=dict)
    home: dict[bytes, int] = field(default_factory=dict)  # key -> state partition
    dirty: set[bytes] = field(default_factory=set)
    sends: list[Record] = field(default_factory=list)  # outputs, forwards, dead letters
    counted: list[Output] = field(default_factory=list)
    consumed: dict[str, int] = field(default_factory=dict)  # per topic, added to the metric once per batch
    accounts: dict[bytes, tuple[int, AccountState]] = field(default_factory=dict)  # touched, by state key
    arrived: list[int] = field(default_factory=list)  # Kafka timestamps (ms) of the events scored


async def flush(worker: LeadWorker, batch: Batch) -> None:
    """Outputs first, acknowledged; state after. The reverse order could store "seen" state whose
    outputs never reached the broker, losing them on a crash."""
    computed_at = now_ms()
    for _partition, account in batch.accounts.values():
        value = worker.codec.encode("account_score", account_score_record(account, computed_at))
        batch.sends.append(
            (worker.output_topics["account_score"], account.domain.encode(), value, None, None)
        )
    await send(worker, batch.sends)
    if worker.metrics:
        now = time.time()  # outputs acknowledged: the events' scores are out
        observe_many(worker.metrics.event_to_score_seconds, [max(0.0, now - t / 1000) for t in batch.arrived])
        for output in batch.counted:
            worker.metrics.count_output(output.schema, output.record)
        for topic, n in batch.consumed.items():
            worker.metrics.events_consumed.labels(topic=worker._unprefixed(topic)).inc(n)
    writes: list[Record] = []
    for key in batch.dirty:
        state = batch.states[key]
        if state is None:
            continue
        due = next_deadline(state, worker.rules)
        worker.store.put(key, batch.home[key], state, due)
        writes.append((worker.state_topic, key, state.to_bytes(), due_header(due), batch.home[key]))
    for key, (partition, account) in batch.accounts.items():
        worker.store.put_account(key, partition, account)
        writes.append((worker.state_topic, key, orjson.dumps(account.to_dict()), None, partition))
    await send(worker, writes)


async def send(worker: LeadWorker, records: Sequence[Record]) -> None:
    assert worker.sender is not None
    await worker.sender.send(records)
