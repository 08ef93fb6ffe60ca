"""What one worker batch produced, and how it becomes durable: two acknowledged waves, outputs first, then
state (the worker commits the batch's offsets only after both).

Why its own module: the per-event path (``agents/worker_records.py``) only fills a ``Batch``; the order of
the writes that makes a crash repeat work instead of losing it lives here, once, for batches, SLA scans and
erasures.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING

import orjson

from agents.account import AccountState, account_score_record
from agents.core import next_deadline
from agents.kafka_batches import Record
from agents.lead_store import due_header
from agents.outputs import Output
from agents.state import LeadState
from agents.worker_clock import now_ms
from streams.dlq import writer_headers
from streams.event_hygiene import InadmissibleEvent
from streams.metrics import observe_many

if TYPE_CHECKING:
    from agents.worker import LeadWorker


#: Largest record (key + value) the worker writes: under Kafka's default ``message.max.bytes`` (1,048,588)
#: with room for the batch overhead. Outputs stay far below it (an input record is at most 64 KiB and an
#: output copies a few of its fields); a lead state need not: its parts are bounded in number, not in bytes
#: (up to 200 buffered anonymous events of up to 64 KiB each, 2,500 seen ids of up to 256 characters).
MAX_RECORD_BYTES = 1_000_000

#: Headers of every dead letter the worker writes (an input record's, an erasure's part not done).
DLQ_HEADERS = writer_headers("worker")


class RecordTooLarge(InadmissibleEvent):
    """Records of a batch over ``MAX_RECORD_BYTES``: (topic, key, size) each. Nothing of the batch was sent.

    Why checked before sending: the broker (or the producer, past its ``max_request_size``) refuses such a
    record for good, and a refused write makes the worker start over and process the batch again: a worker
    that retried the same refusal for ever, with a warning each time, and processed nothing else."""

    def __init__(self, records: list[tuple[str, bytes | None, int]]) -> None:
        self.records = records
        shown = "; ".join(
            f"{topic} key {key.decode(errors='replace') if key else None!r}: {size} bytes"
            for topic, key, size in records[:5]
        )
        super().__init__("record_too_large", f"over the {MAX_RECORD_BYTES}-byte record limit: {shown}")


class NotWritable(Exception):
    """Records of a batch that could not be built (nothing was sent): by key (a lead's, or an account's
    ``ACCOUNT_PREFIX`` + domain), the topic and the exception of ``next_deadline``, ``LeadState.to_bytes``,
    the account's state or its ``account_score`` encoding. A core bug, e.g. a state holding a value the
    encoder refuses.

    Why caught per key: these run after ``worker_records.process``'s per-record guard; the exception escaped
    the poll loop and the worker exited, and after a restart the same batch raised again: a crash loop. The
    worker drops the batch and dead-letters that key's input records when it comes again
    (``worker_failures.not_written``), as for a record too large to write."""

    def __init__(self, failures: dict[bytes, tuple[str, BaseException]]) -> None:
        self.failures = failures
        shown = "; ".join(
            f"{topic} key {key.decode(errors='replace')!r}: {type(exc).__name__}: {exc}"
            for key, (topic, exc) in list(failures.items())[:5]
        )
        super().__init__(f"could not be built (a core bug): {shown}")


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
    # (source topic, stage, reason) of each dead letter, and inputs dropped as erased per topic: counted once
    # the batch is durable, like the rest of its metrics
    dead_letters: list[tuple[str, str, str]] = field(default_factory=list)
    erased: dict[str, int] = field(default_factory=dict)


@dataclass
class StateWave:
    """A batch whose outputs are acknowledged: its encoded states, still to be written (``write_state``, or
    the worker's next checkpoint)."""

    batch: Batch
    writes: list[Record]
    scored_at: float


async def flush(worker: LeadWorker, batch: Batch) -> None:
    """Outputs first, acknowledged; state after. The reverse order could store "seen" state whose
    outputs never reached the broker, losing them on a crash."""
    await write_state(worker, await write_outputs(worker, batch))


async def write_outputs(worker: LeadWorker, batch: Batch) -> StateWave:
    """The first wave: every record of the batch built (its states encoded too, so that one too large to
    write or that raises stops the batch before anything is sent), its outputs sent and acknowledged, and
    its states put in the store (the next batch reads them). The states' own write is returned, not sent:
    the worker writes it at its next checkpoint (``agents/worker_checkpoint.py``).

    Why encoded here and not at the checkpoint: ``step`` changes states in place, so once the next batch
    ran, these bytes are the only copy of the state its outputs were sent for; a batch that fails (the
    core raised, a record too large) is dropped, and the checkpoint before it is written from them."""
    computed_at = now_ms()
    # (a try per key costs nothing until it raises: zero-cost exceptions since Python 3.11)
    failed: dict[bytes, tuple[str, BaseException]] = {}
    score_topic = worker.output_topics["account_score"]
    for key, (_partition, account) in batch.accounts.items():
        try:
            value = worker.codec.encode("account_score", account_score_record(account, computed_at))
        except Exception as exc:
            failed[key] = (score_topic, exc)
            continue
        batch.sends.append((score_topic, account.domain.encode(), value, None, None))
    # the states are encoded before anything is sent, so that one too large to write stops the batch first
    writes: list[Record] = []
    stored: list[tuple[bytes, int, LeadState, int | None]] = []
    for key in batch.dirty:
        state = batch.states[key]
        if state is None:
            continue
        try:
            due = next_deadline(state, worker.rules)
            value = state.to_bytes()
        except Exception as exc:
            failed[key] = (worker.state_topic, exc)
            continue
        stored.append((key, batch.home[key], state, due))
        writes.append((worker.state_topic, key, value, due_header(due), batch.home[key]))
    for key, (partition, account) in batch.accounts.items():
        try:
            value = orjson.dumps(account.to_dict())
        except Exception as exc:
            failed.setdefault(key, (worker.state_topic, exc))
            continue
        writes.append((worker.state_topic, key, value, None, partition))
    if failed:
        raise NotWritable(failed)
    check_sizes(worker, chain(batch.sends, writes))
    await send(worker, batch.sends)
    scored_at = time.time()  # outputs acknowledged: the events' scores are out
    for key, partition, state, due in stored:
        worker.store.put(key, partition, state, due)
    for key, (partition, account) in batch.accounts.items():
        worker.store.put_account(key, partition, account)
    return StateWave(batch, writes, scored_at)


async def write_state(worker: LeadWorker, wave: StateWave) -> None:
    """The second wave: the states of a batch whose outputs are acknowledged, written and acknowledged;
    then the batch is counted (``count``)."""
    await send(worker, wave.writes)
    worker.retry_backoff.reset()  # the broker takes writes again
    if worker.metrics:
        count(worker, wave.batch, wave.scored_at)


def check_sizes(worker: LeadWorker, records: Iterable[Record]) -> None:
    """Raise ``RecordTooLarge`` (counted) for the records over ``MAX_RECORD_BYTES``, before any is sent."""
    too_large = [
        (topic, key, size)
        for topic, key, value, _headers, _partition in records
        if value is not None and (size := len(value) + len(key or b"")) > MAX_RECORD_BYTES
    ]
    if too_large:
        if worker.metrics:
            for topic, _key, _size in too_large:
                worker.metrics.records_too_large.labels(topic=worker._unprefixed(topic)).inc()
        raise RecordTooLarge(too_large)


def count(worker: LeadWorker, batch: Batch, scored_at: float) -> None:
    """The batch's metrics, once: for an SLA scan's or an erasure's batch when both waves are acknowledged;
    for a batch of input records when its outputs are (``worker_records``), unless this worker counted its
    records before (``LeadWorker.counted_to``).

    Why: a batch whose writes the broker did not acknowledge is processed again after a start-over
    (``LeadWorker.start_over``), and each pass counted its records, outputs and dead letters (a state wave
    refused after the outputs wave: every event of the batch counted twice in
    ``leadpulse_events_consumed_total``, its hot leads twice in ``leadpulse_hot_leads_total``). Counted at
    the checkpoint instead, the counts came in lumps a second apart, which the throughput bench reads. The
    one repeat left is a batch whose offset commit is refused because its partitions moved: their next
    owner reads the records again and counts them as consumed (its outputs are duplicates, not emitted, not
    counted)."""
    metrics = worker.metrics
    assert metrics is not None
    observe_many(metrics.event_to_score_seconds, [max(0.0, scored_at - t / 1000) for t in batch.arrived])
    for output in batch.counted:
        metrics.count_output(output.schema, output.record)
    for topic, n in batch.consumed.items():
        metrics.events_consumed.labels(topic=worker._unprefixed(topic)).inc(n)
    for topic, stage, reason in batch.dead_letters:
        metrics.dlq_records.labels(source_topic=topic, stage=stage).inc()
        metrics.events_invalid.labels(topic=topic, reason=reason).inc()
    for topic, n in batch.erased.items():
        metrics.events_erased.labels(topic=worker._unprefixed(topic)).inc(n)


async def send(worker: LeadWorker, records: Sequence[Record]) -> None:
    assert worker.sender is not None
    await worker.sender.send(records)
