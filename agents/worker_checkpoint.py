"""What the worker's batches since its last checkpoint left to make durable: their lead and account states and
their offsets. Written together at most every ``LEADPULSE_WORKER_COMMIT_INTERVAL_S`` (and before anything
that reads states back, writes them otherwise or moves partitions), each key's newest state once.

Why not once per batch, as before stop 31: under live traffic batches are small, and the busy leads (Zipf: a
few leads get most events; their states up to ~70 KB of seen ids and caps) were re-written with nearly every
batch, each write a round trip the next batch waited for and most of the changelog's bytes
(docs/benchmarks.md, stop 31). Kafka Streams does the same with ``commit.interval.ms``.

What does not change: a state reaches the changelog only after the outputs of every event it holds are
acknowledged (each batch's outputs are acknowledged before its encoded states are added here), and offsets are
committed only after the states that hold their events. A crash repeats the batches since the last
checkpoint; their outputs carry the same ids (dropped downstream), as a crash between two waves always did.
A batch that fails (the core raised, a record too large or not writable) is dropped alone: the checkpoint
holds the bytes encoded for the batches before it, not the states in memory, which the failed batch changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from agents.kafka_batches import Record
from agents.worker_batch import StateWave


@dataclass
class Checkpoint:
    """Batches scored (outputs acknowledged) whose states and offsets are not written yet."""

    records: dict[bytes, Record] = field(default_factory=dict)  # state records by key: the newest wins
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    opened_at: float | None = None

    def add(self, wave: StateWave, offsets: dict[TopicPartition, int]) -> None:
        for record in wave.writes:
            key = record[1]
            assert key is not None
            self.records.pop(key, None)  # (re-inserted: the records keep the order of their newest batch)
            self.records[key] = record
        self.offsets.update(offsets)
        if self.opened_at is None:
            self.opened_at = time.monotonic()

    def __bool__(self) -> bool:
        return self.opened_at is not None

    def due(self, interval_s: float) -> bool:
        return self.opened_at is not None and time.monotonic() - self.opened_at >= interval_s
