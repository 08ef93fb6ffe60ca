"""Per-target progress of the notifier above its committed offsets, kept on a compacted internal topic so
that after a restart or a rebalance a target is not sent again a notification it already finished.

Why: the group commits a partition only up to its oldest notification not finished by *every* target
(``agents/notifier_group.py``), so a restart re-sent to every target whatever any one target still owed.
JSON receivers drop the copy by its idempotency key; Slack has none, and while one target hung (up to ~5 min
per notification with the defaults) everything the others delivered meanwhile was posted to Slack again.

Why a topic and not the offset commit's ``metadata`` string: Tansu 0.6 accepts the metadata and drops it
(an OffsetFetch answers ``""``, checked against the test broker), so it would only work on some brokers.
One record per (group, partition), written after the commit: ``base`` (the offset committed then) and, per
target, the offsets at or above it that the target finished, as ranges. Keyed by a short hash of the
target's kind and URL (``target_keys``), never its name (names are positions in the configured lists, so
an edited list would apply one endpoint's progress to another) nor its URL (it may hold a token).

Safety: a record only ever states facts (that offset was delivered, dead-lettered or dropped as erased for
that target), so applying an old one merely re-sends, never loses. A record whose ``base`` is above the
group's committed offset is ignored: the offsets were moved back (an operator's reset, expired group
offsets), and a reset means "send again". For that test to hold, a partition's latest record must not
outlive the state it describes: a record that differs from the current ``(base, done)`` is superseded, also
by an empty one once everything is finished. Before, the record written while a target hung (base 0, the
other target done with everything) stayed the latest after all was delivered, and a reset of the group to
0 skipped that other target for every notification the operator asked to have sent again. A record larger
than ``MAX_RECORD_BYTES`` is not written (logged once per partition, counted in ``dropped`` and
``leadpulse_notifier_progress_dropped_total``): the last one written still holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import Counter

from sinks.webhook import WebhookTarget
from streams.broker import aiokafka_client_config
from streams.kafka_close import COMMIT_TIMEOUT_S, start_client, stop_consumer
from streams.settings import Settings
from streams.topics import NOTIFIER_PROGRESS

log = logging.getLogger("agents.notifications")

#: Finished by every target: a notification that did not decode and went to the DLQ as a whole.
ALL = "*"
#: Bound of one record (Kafka's own limit is ~1 MB): ranges stay short unless a target finishes offsets
#: out of order for a long time; past it the partition keeps its last record (re-sends, as before).
MAX_RECORD_BYTES = 32 * 1024
#: Most offsets a record may hold, all targets together (a lane queue holds 10,000 by default).
MAX_OFFSETS = 1_000_000
#: Longest wait for the broker to take one record (it just answered a commit, so milliseconds).
WRITE_TIMEOUT_S = 3.0
#: Shortest time between two records of a partition while running (a stop or a revocation writes at once):
#: bounds the topic's growth on a broker that does not compact (Tansu) to a record per 5 s per partition,
#: at the price of re-sending up to that much of the other targets' deliveries after a crash.
WRITE_INTERVAL_S = 5.0
#: How many of a progress partition's last records are read for a key (one writer per partition).
READ_WINDOW = 256

Done = dict[str, set[int]]  # target key -> finished offsets


def target_keys(targets: Sequence[WebhookTarget]) -> list[str]:
    """A short, stable key per target: its kind and URL hashed, plus which copy of that URL it is."""
    seen: dict[tuple[str, str], int] = {}
    keys = []
    for target in targets:
        copy = seen.get((target.kind, target.url), 0)
        seen[(target.kind, target.url)] = copy + 1
        digest = hashlib.sha256(f"{target.kind}\n{target.url}\n{copy}".encode()).hexdigest()
        keys.append(digest[:16])
    return keys


def to_ranges(offsets: Iterable[int]) -> list[list[int]]:
    """Sorted offsets as inclusive ``[first, last]`` runs."""
    ranges: list[list[int]] = []
    for offset in sorted(set(offsets)):
        if ranges and ranges[-1][1] == offset - 1:
            ranges[-1][1] = offset
        else:
            ranges.append([offset, offset])
    return ranges


def encode(base: int, done: Mapping[str, Iterable[int]]) -> bytes | None:
    """The record's value, or None when it would exceed ``MAX_RECORD_BYTES``."""
    body = {"v": 1, "base": base, "done": {k: to_ranges(v) for k, v in sorted(done.items()) if v}}
    value = json.dumps(body, separators=(",", ":")).encode()
    return value if len(value) <= MAX_RECORD_BYTES else None


def decode(value: bytes | None) -> tuple[int, Done] | None:
    """``(base, done)``, or None for a record this release cannot read (it is then ignored)."""
    try:
        body = json.loads(value or b"")
        base = int(body["base"])
        runs = {
            str(k): [(int(first), int(last)) for first, last in ranges] for k, ranges in body["done"].items()
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    # max(0, …): a backwards run counted negative and let a run of 10**12 through
    if sum(max(0, last - first + 1) for ranges in runs.values() for first, last in ranges) > MAX_OFFSETS:
        return None  # not one of ours: a partition never has that many notifications in flight
    return base, {
        k: {o for first, last in ranges for o in range(first, last + 1)} for k, ranges in runs.items()
    }


def applicable(record: tuple[int, Done] | None, committed: int | None) -> Done:
    """What of ``record`` a process starting at ``committed`` skips."""
    if record is None or committed is None or record[0] > committed:
        return {}
    return {k: kept for k, v in record[1].items() if (kept := {o for o in v if o >= committed})}


class ProgressLog:
    """Reads a group's progress records on assignment and writes them after commits."""

    def __init__(
        self, settings: Settings, *, group_id: str, bootstrap: str, dropped: Counter | None = None
    ) -> None:
        self.settings = settings
        self.dropped_counter = dropped  # leadpulse_notifier_progress_dropped_total, when exported
        self.group_id = group_id
        self.bootstrap = bootstrap
        self.topic = settings.topic(NOTIFIER_PROGRESS.name)
        self.producer: AIOKafkaProducer | None = None  # the notifier's, once started
        self.partitions: int | None = None  # of the progress topic; None until read (or missing)
        self.written: dict[TopicPartition, tuple[int, Done]] = {}  # the latest record (written or read)
        self.written_at: dict[TopicPartition, float] = {}  # monotonic time of the last write
        self.read_ms: dict[TopicPartition, int] = {}  # the record read back: when it was written
        self.dropped = 0  # records not written because too large
        self._warned: set[str] = set()

    def key(self, tp: TopicPartition) -> bytes:
        return f"{self.group_id}\n{tp.topic}\n{tp.partition}".encode()

    def _warn_once(self, what: str, message: str, *args: Any) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message, *args)

    async def load(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, Done]]:
        """The latest record of each of ``tps`` that has one, remembered as what a write must supersede;
        {} (with a warning) when they cannot be read: a restart then re-sends what the other targets had
        finished, as before."""
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            **aiokafka_client_config(self.settings),
        )
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                await start_client(reader)
                return await self._read(reader, tps)
        except Exception as exc:  # incl. the timeout: progress is an optimisation, the offsets decide
            self._warn_once(
                "read",
                "could not read notifier progress from %s (%s: %s); targets may be sent again "
                "what they had finished",
                self.topic,
                type(exc).__name__,
                exc,
            )
            return {}
        finally:
            await stop_consumer(reader)

    async def _read(
        self, reader: AIOKafkaConsumer, tps: Sequence[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, Done]]:
        parts = reader.partitions_for_topic(self.topic)
        if not parts:
            await reader.topics()  # a metadata request: the client knows no topic before one
            parts = reader.partitions_for_topic(self.topic)
        if not parts:
            self.partitions = None
            self._warn_once(
                "missing",
                "topic %s is missing (run `leadpulse topics create`): a restart re-sends to "
                "every target what any one had not finished",
                self.topic,
            )
            return {}
        self.partitions = len(parts)
        if not tps:
            return {}
        wanted = {self.key(tp): tp for tp in tps}
        sources = sorted({self._partition(tp) for tp in tps})
        reader.assign(sources)
        ends = await reader.end_offsets(sources)
        starts = await reader.beginning_offsets(sources)
        for src in sources:
            # Tansu's ListOffsets may answer below the true end (streams/tansu_compat.py), never above it:
            # reading on to the fetch high watermark covers at least the window.
            reader.seek(src, max(starts[src], ends[src] - READ_WINDOW))
        found: dict[TopicPartition, tuple[int, Done]] = {}
        todo = {src for src in sources if ends[src] > starts[src]}
        while todo:
            batches = await reader.getmany(*todo, timeout_ms=500)
            for records in batches.values():
                for record in records:
                    tp = wanted.get(record.key or b"")
                    if tp is not None and (parsed := decode(record.value)) is not None:
                        found[tp] = parsed
                        self.written[tp] = parsed
                        self.read_ms[tp] = record.timestamp
            for src in list(todo):
                high = reader.highwater(src)
                if high is not None and await reader.position(src) >= high:
                    todo.discard(src)
        return found

    def _partition(self, tp: TopicPartition) -> TopicPartition:
        return TopicPartition(self.topic, tp.partition % (self.partitions or 1))

    def changed(self, tp: TopicPartition, base: int, done: Done, final: bool = False) -> bool:
        """Whether ``(base, done)`` differs from ``tp``'s latest record and is to be written now. Nothing is
        written while both are empty (a single target delivering in order never writes)."""
        if self.producer is None or self.partitions is None:
            return False
        last_at = self.written_at.get(tp)
        if not final and last_at is not None and time.monotonic() - last_at < WRITE_INTERVAL_S:
            return False
        last_base, last_done = self.written.get(tp, (base, {}))
        done = {k: v for k, v in done.items() if v}
        if not done and not any(last_done.values()):
            return False
        return (base, done) != (last_base, {k: v for k, v in last_done.items() if v})

    async def save(self, tp: TopicPartition, base: int, done: Done) -> None:
        """Write ``tp``'s progress; raises when the broker does not take it within ``WRITE_TIMEOUT_S``."""
        assert self.producer is not None  # changed() said so
        value = encode(base, done)
        if value is None:
            self.dropped += 1
            if self.dropped_counter is not None:
                self.dropped_counter.inc()
            self._warn_once(
                f"big-{tp}",
                "notifier progress of %s[%d] exceeds %d bytes: not written (%d so far); a "
                "restart may re-send its last notifications",
                tp.topic,
                tp.partition,
                MAX_RECORD_BYTES,
                self.dropped,
            )
            self.written[tp] = (base, {k: set(v) for k, v in done.items()})  # not tried until it changes
            return
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await self.producer.send_and_wait(
                self.topic,
                value=value,
                key=self.key(tp),
                partition=self._partition(tp).partition,
                timestamp_ms=int(time.time() * 1000),
            )
        self.written[tp] = (base, {k: set(v) for k, v in done.items()})
        self.written_at[tp] = time.monotonic()

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.written.pop(tp, None)
            self.written_at.pop(tp, None)
            self.read_ms.pop(tp, None)
