"""The sink loop: consume every input and output topic, batch rows per table, insert into ClickHouse,
then commit. A dedicated consumer, not a Faust agent (argued in docs/clickhouse.md).

Why aiokafka: measured here, kafka-python 3 consumes ~27k records/s (~85k with CRC checks off) against
aiokafka's ~300k/s, and the consumer would otherwise be the sink's ceiling. Inserts run in a worker thread
so that a slow ClickHouse never starves the consumer's heartbeats, and so that the loop goes on fetching and
taking records into fresh batches while a batch is inserted (one insert at a time, see ``_flush``).

The loop's contract (DESIGN §7, STYLE "commit after durable"):
- offsets move only after the rows below them are inserted (or dead-lettered and the DLQ flushed);
- ClickHouse down or overloaded: pause every partition, wait the backoff, re-send the identical batch
  (same dedup token) first; no partition's commit passes a record of that batch meanwhile (a partition
  whose every record is handled, e.g. dead-lettered, may still move) and the process never exits for it;
- rows ClickHouse rejects as invalid, and records that cannot be decoded, go to the ``dlq`` topic;
- on (re)assignment it skips the records already stored per partition, so a crash between insert and
  commit does not store a batch twice even if the re-read batch is cut differently; only offsets actually
  stored are skipped: the gaps among them above the committed offset (a dead letter unacknowledged when the
  sink died, rows refused in a bisection whose batch a rebalance dropped) are taken again
  (``sinks.resume_point``). Revoked partitions are given up only after the insert in flight has ended
  (``_Listener``), so that their next owner's resume point counts it;
- records of leads erased with ``leadpulse forget`` (the erasure log, ``streams.erasures``) are dropped
  before insert, so a replay cannot bring them back; with embedded ClickHouse the sink owns the engine and
  also deletes the lead's stored rows when an erasure arrives (``sinks.erase``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from clickhouse_connect.driver.client import Client

from schemas.registry import HEADER_LEN, SchemaRegistry, default_registry
from sinks.batch import BatchPolicy, ClickHouseBatchSink, Rejected, SinkBatch
from sinks.dead_letters import DeadLetters
from sinks.erase import (
    already_applied,
    apply_erasure,
    erasures_with_rows,
    event_head,
    recorded_erasure,
    remaining_rows,
)
from sinks.errors import SinkBackpressure
from sinks.lag_report import LagReport
from sinks.query_service import client_runner
from sinks.recent_ids import RecentIds
from sinks.record_intake import SINK_TOPICS, RecordIntake
from sinks.resume_point import ResumePoint
from sinks.rows import EVENTS, TableSpec
from sinks.sink_hooks import SinkHooks
from sinks.stored_positions import StoredPositions, check_same_log
from streams.broker import aiokafka_client_config
from streams.erasures import ErasureLog
from streams.kafka_close import commit, group_commits, start_unless_stopped, stop_consumer
from streams.settings import Settings
from streams.stoppable import finished_before_stop
from streams.topics import spec_for

log = logging.getLogger(__name__)


#: Catalogue name of the sink's consumer group, and its ``group`` label on the lag metric whatever the prefix
#: (LeadpulseSinkStalled matches ``group="leadpulse-sink"``; the group itself carries the topic prefix).
SINK_GROUP = "leadpulse-sink"


#: Seconds to wait before fetching again the records of partitions whose resume point ClickHouse could not
#: give at their first fetch (``ClickHouseSinkLoop._resume_from_first_fetch``).
RESUME_RETRY_S = 5.0

#: Seconds a sink with a ClickHouse server waits for ``forget``'s own deletion of a lead before it sweeps the
#: lead's rows anyway (``ClickHouseSinkLoop._sweep_erasure``).
SWEEP_WAIT_S = 300.0


def sink_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}{SINK_GROUP}"


@dataclass
class SinkStats:
    consumed: int = 0
    inserted: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    erased: int = 0
    duplicates: int = 0
    failures: int = 0
    commits: int = 0
    last_success: float = 0.0
    assigned: set[tuple[str, int]] = field(default_factory=set)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Records what a rebalance changed; the loop acts on it between fetches (see ``_apply_rebalance``).

    Revoked partitions are given up only once the insert in flight (``in_flight``) has ended: aiokafka
    awaits this callback before it rejoins the group, so the partitions' next owner reads the stored
    positions after that insert, not before (it would store the same records again, cut into other
    batches, so with other dedup tokens). No insert starts while a revocation waits to be applied
    (``ClickHouseSinkLoop._flush``). The insert's result is left to the loop."""

    def __init__(self, in_flight: Callable[[], asyncio.Future[Any] | None]) -> None:
        self.revoked: set[tuple[str, int]] = set()
        self.assigned: set[tuple[str, int]] = set()
        self.in_flight = in_flight

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.revoked.update((tp.topic, tp.partition) for tp in revoked)
        insert = self.in_flight()
        if insert is not None and not insert.done():
            log.info("rebalance: waiting for the insert in flight before giving up partitions")
            await asyncio.wait({insert})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned.update((tp.topic, tp.partition) for tp in assigned)


class ClickHouseSinkLoop:
    """One consumer, one batch sink, one DLQ producer. ``run(stop_event)`` blocks until the event is set."""

    def __init__(
        self,
        settings: Settings,
        client: Client,
        *,
        policy: BatchPolicy | None = None,
        hooks: SinkHooks | None = None,
        registry: SchemaRegistry | None = None,
        max_poll_records: int = 20_000,
        fast_path: bool = True,
    ) -> None:
        self.settings = settings
        self.client = client
        self.hooks = hooks or SinkHooks()
        self.registry = registry or default_registry()
        self.email_key = settings.email_hash_key.get_secret_value().encode()
        self.sink = ClickHouseBatchSink(client, policy, on_insert=self.hooks.inserted)
        self.group = sink_group(settings)
        self.topics = [settings.topic(t.name) for t in SINK_TOPICS]
        self.stats = SinkStats()
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.resume: dict[tuple[str, int], ResumePoint] = {}  # what is stored already, per partition
        # Partitions assigned without a known committed offset: their highest stored offset, until their
        # first fetch tells where the group's position is (``_resume_from_first_fetch``); None when
        # ClickHouse did not answer at assignment (read at the first fetch too).
        self.resume_pending: dict[tuple[str, int], int | None] = {}
        self.retry_at: float | None = None
        self.writing: tuple[SinkBatch, asyncio.Future[list[Rejected]]] | None = None  # the insert in flight
        self.max_poll_records = max_poll_records
        self.fast_path = fast_path
        self._listener = _Listener(lambda: None if self.writing is None else self.writing[1])
        self.lag = LagReport(self.hooks, SINK_GROUP, settings.topic_prefix)
        self.positions = StoredPositions(settings, client, self.registry, self.email_key)
        self.dead_letters = DeadLetters(settings, self.registry)
        self.consumer: AIOKafkaConsumer | None = None
        # Erasures: read at start, tailed while running; applied to ClickHouse here when this process owns
        # the embedded engine. With a server, `leadpulse forget` deletes on the server itself, and the sink
        # only sweeps what it stored of the lead around that moment (``_sweep_erasure``).
        self.erasures: ErasureLog | None = None
        self.apply_erasures = settings.embedded_clickhouse
        self._pending_erasures: list[dict[str, Any]] = []
        self._erasures_flush_due = False  # erasures arrived: store what was taken before, once
        self._sweep_waits: dict[tuple[str, int], float] = {}  # server: sweeps waiting for forget's deletion
        self._read_at_start: list[dict[str, Any]] = []  # server: looked at once for rows (``_left_at_start``)
        self.intake = RecordIntake(
            settings,
            self.registry,
            self.email_key,
            self.sink,
            RecentIds(settings.sink_recent_ids),
            fast_path=fast_path,
            dead_letter=self._dead_letter,
            duplicate=self._duplicate,
            erased=self._erased,
        )

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> SinkStats:
        asyncio.run(self.run_async(stop))
        return self.stats

    async def run_async(self, stop: threading.Event) -> None:
        config = aiokafka_client_config(self.settings)
        self.erasures = ErasureLog(self.settings)
        # First: an aiokafka client never started still complains "Unclosed". With the broker hung each step
        # of the read waits 30-40 s: a stop meanwhile ends it (ErasureLog.start closes its consumer), as the
        # worker's and the notifier's (tests/faults/test_sink_start_broker_hung.py: SIGTERM took 38-90+ s).
        if not await finished_before_stop(self.erasures.start(), stop.is_set):
            log.info("sink stopped while reading the erasure log (nothing consumed)")
            return
        if not self.apply_erasures:
            # Read at start: nothing of those leads is taken by this process, but an earlier sink may have
            # stored rows of them after forget's delete; one query finds those (``_left_at_start``). Taken
            # here, before the tail task first runs (no await since start() returned), not at the first
            # step: a first step that backs off before it looks for erasures (a resume point ClickHouse
            # cannot give) took records, and an erasure arriving meanwhile was counted as read at start.
            self._read_at_start = self.erasures.drain_new()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **config,
        )
        self.consumer.subscribe(self.topics, listener=self._listener)
        try:
            log.info("joining consumer group %s on %d topics", self.group, len(self.topics))
            if not await start_unless_stopped(self.consumer, stop.is_set):
                log.info("sink stopped before its first partition assignment")
                return
            while not stop.is_set():
                await self.step()
            await self.drain()
        finally:
            await self._settle_insert()  # never abandoned: see there
            await stop_consumer(self.consumer)
            await self.erasures.stop()
            await self.dead_letters.close()  # bounded like the consumer's close

    async def step(self, poll_ms: int = 200) -> None:
        assert self.consumer is not None
        if self.retry_at is not None:
            wait = self.retry_at - time.monotonic()
            if wait > 0:
                # Paused: nothing comes back, except from partitions assigned in the same call (a new
                # assignment starts unpaused): taken, never dropped, since the position moved past them.
                records = await self.consumer.getmany(timeout_ms=int(min(wait, 0.5) * 1000))
                await self._apply_rebalance()
                await self._take_fetched(records)
                await self.lag.report_due(self.consumer, self.committed)
                return
            # No fetch this step (the failed batch is re-sent first), so apply here a rebalance noted since
            # the last one: ``_flush`` starts no insert while a revocation waits, and only this applies it.
            await self._apply_rebalance()
        else:
            records = await self.consumer.getmany(timeout_ms=poll_ms, max_records=self.max_poll_records)
            await self._apply_rebalance()
            if self.writing is not None and self.writing[1].done():
                await self._settle_write()  # first: the records taken next must know what it stored
            await self._take_fetched(records)
        await self.lag.report_due(self.consumer, self.committed)
        if self.retry_at is not None and self.retry_at > time.monotonic():
            return  # the insert in flight failed just now: back off before re-sending it
        try:
            await self._flush()
            await self._apply_erasures()
        except SinkBackpressure as exc:
            self._back_off(exc)

    async def _take_fetched(self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Take what a fetch returned, but for partitions given up meanwhile (their next owner reads them)."""
        left = await self._resume_from_first_fetch(records)  # (a partition given up is no longer pending)
        for tp, messages in records.items():
            if (tp.topic, tp.partition) in self.stats.assigned and (tp.topic, tp.partition) not in left:
                self._take(tp, messages)

    async def _resume_from_first_fetch(
        self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> set[tuple[str, int]]:
        """The resume points of partitions assigned while their committed offset could not be read (the
        group coordinator did not answer, or the group has none), or whose stored offsets ClickHouse did not
        give then (``None`` in ``resume_pending``: read here too), once their first records are here.

        Why wait: the gaps among the stored offsets are listed from a lower bound, and at most
        ``MAX_GAPS`` of them; listed from offset 0, the gaps below the committed offset (every record
        dead-lettered, dropped as a re-send or erased there) filled the listing, skipping ended at the
        first unlisted one, below the committed offset, and every stored record above it was stored again.
        The first fetched offset is where the group's position starts (the consumer reads the committed
        offset itself before it fetches): nothing below it is taken, so the gaps are listed from there.

        Returned: the partitions whose records are left untaken, because ClickHouse did not answer. They
        stay pending, their position goes back to the first fetched offset and the loop backs off like for
        any ClickHouse failure (before, the error ended the sink)."""
        if not self.resume_pending:
            return set()
        firsts = {
            (tp.topic, tp.partition): messages[0].offset
            for tp, messages in records.items()
            if messages and (tp.topic, tp.partition) in self.resume_pending
        }
        if not firsts:
            return set()
        if self.writing is not None:  # one statement at a time on the client (a session allows no other)
            await self._settle_write()
        pending = {key: self.resume_pending[key] for key in firsts}
        try:
            stored = {key: offset for key, offset in pending.items() if offset is not None}
            unread = {key for key, offset in pending.items() if offset is None}
            if unread:
                stored.update(await self._stored_positions(unread))
            points = await asyncio.to_thread(self.positions.resume_points, stored, firsts)
        except Exception as exc:  # ClickHouse away or busy (unknown = retryable, as for inserts)
            assert self.consumer is not None
            assignment = self.consumer.assignment()
            for key, offset in firsts.items():
                if TopicPartition(*key) in assignment:
                    self.consumer.seek(TopicPartition(*key), offset)  # fetched again after the back-off
            what = "reading the stored offsets of newly fetched partitions"
            self.hooks.unavailable()  # as an insert ClickHouse refuses: LeadpulseSinkFailing sees it
            self._back_off(SinkBackpressure("resume", RESUME_RETRY_S, exc, what=what))
            return set(firsts)
        for key in firsts:
            self.resume_pending.pop(key, None)
        self.resume.update(points)
        return set()

    async def _settle_write(self) -> None:
        """``_finish_write`` outside ``_flush``: a failed insert starts the back-off here."""
        try:
            await self._finish_write()
        except SinkBackpressure as exc:
            self._back_off(exc)

    def _back_off(self, exc: SinkBackpressure) -> None:
        """Pause every partition until ``retry_at``; then the batch that failed is re-sent first."""
        assert self.consumer is not None
        log.warning("%s", exc)
        self.stats.failures += 1
        self.retry_at = time.monotonic() + exc.retry_after
        self.consumer.pause(*self.consumer.assignment())

    async def drain(self) -> None:
        """On shutdown: one last attempt to store and commit what is batched; if it fails, leave it
        uncommitted (it is re-read on restart). With a ClickHouse server, erasures the tail has and no step
        swept yet are swept after that store: it may hold rows of their leads taken before they arrived
        (``_sweep_erasure``). What is left then (an erasure the tail had not seen, a sweep still waiting for
        forget's deletion) the next sink finds at its start (``_left_at_start``)."""
        try:
            await self._flush(force=True)
        except SinkBackpressure as exc:
            log.warning("shutdown with records neither stored nor dead-lettered; re-read on restart: %s", exc)
            return
        if self.apply_erasures:  # embedded: the next start applies what is not applied yet
            return
        problem = "their deletion by `leadpulse forget` was not recorded yet"
        self._read_at_start = []  # not looked at now: the next start does
        try:
            await self._apply_erasures()
        except SinkBackpressure as exc:
            problem = str(exc)
        if self._pending_erasures:
            log.warning(
                "shutdown: rows of erased lead(s) %s this sink stored may be left (%s); the next sink "
                "start sweeps them",
                ", ".join(str(r["lead_id"]) for r in self._pending_erasures),
                problem,
            )

    async def _settle_insert(self) -> None:
        """An insert still in flight when the loop ends (drain awaits it; an error may leave it) is awaited,
        never abandoned: its thread would go on writing after the consumer left the group, and a failure
        would be an exception nobody retrieves. Its records are re-read if it did not store them."""
        if self.writing is None:
            return
        try:
            await self._finish_write()
        except Exception as exc:  # the loop is ending anyway; nothing of the batch was committed
            log.warning("the insert in flight at exit failed, its records will be re-read: %s", exc)

    # --- erasures ---------------------------------------------------------------------------------------
    async def _apply_erasures(self) -> None:
        """Delete newly erased leads from the embedded engine this process owns, or, with a server, sweep
        what this sink stored of them (``_sweep_erasure``). Rows of the lead taken before the erasure
        arrived are flushed first, so the deletion removes them too."""
        if self.erasures is None:
            return
        new = self.erasures.drain_new()  # (server: those read at start are not, see run_async)
        if new:
            self._pending_erasures.extend(new)
            self._erasures_flush_due = True
        if self._read_at_start and not self._listener.revoked:
            await self._left_at_start()
        if not self._pending_erasures or self._listener.revoked:
            return  # (a revocation first: the batches it drops are re-read, without the erased records)
        if self._erasures_flush_due:  # once per arrival: what is taken later holds none of the lead's rows
            await self._flush(force=True)
            self._erasures_flush_due = False
        elif self.writing is not None:
            # One statement at a time on the client: a server refuses a second one within its session, and a
            # sweep waiting for forget's deletion asks at every step, right after a step started an insert.
            await self._finish_write()
        waiting: list[dict[str, Any]] = []
        try:
            while self._pending_erasures:
                record = self._pending_erasures[0]
                try:
                    done = await asyncio.to_thread(self._apply_erasure, record)
                except Exception as exc:  # ClickHouse busy/away: keep it pending, back off like an insert
                    raise SinkBackpressure("erasures", 5.0, exc) from exc
                self._pending_erasures.pop(0)
                if not done:
                    waiting.append(record)
        finally:
            self._pending_erasures[:0] = waiting

    async def _left_at_start(self) -> None:
        """With a server: queue for a sweep the erasures read at start whose rows are still stored.

        Why: a sink that stored rows of a lead and then stopped or crashed before its tail saw the lead's
        erasure (or before its sweep ran) left them after ``forget``'s delete, for good: this process reads
        that erasure at its start, takes none of the lead's records, and so never swept it. One query over
        the base tables for every erasure read (``erasures_with_rows``); only those with rows are swept,
        by the tail's rules (``_sweep_erasure``: after forget's own deletion is recorded)."""
        if self.writing is not None:  # one statement at a time on the client
            await self._finish_write()
        try:
            left = await asyncio.to_thread(erasures_with_rows, self.client, self._read_at_start)
        except Exception as exc:  # ClickHouse busy/away: checked again after the back-off
            raise SinkBackpressure("erasures", 5.0, exc) from exc
        self._read_at_start = []
        if left:
            log.warning(
                "erasure log: rows of %d lead(s) erased before this start are still stored; sweeping them",
                len(left),
            )
            self._pending_erasures[:0] = left

    def _apply_erasure(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` is done with (False: a sweep waits for ``forget``'s own deletion)."""
        if not self.apply_erasures:
            return self._sweep_erasure(record)
        if already_applied(self.client, record):
            return True
        result = apply_erasure(self.client, record, applied_by="sink")
        log.info("erasure %s applied: %d row(s) deleted", result.erasure_id, result.total)
        return True

    def _sweep_erasure(self, record: dict[str, Any]) -> bool:
        """With a ClickHouse server, after the rows taken before the erasure arrived are stored: delete
        whatever of the lead is stored now, recorded as applied by the sink, if anything is.

        Why: ``forget`` logs the erasure, then deletes on the server. Rows of the lead this sink had taken
        (batched, or in an insert in flight) before its tail saw the erasure were inserted after that delete
        and stayed, with the erasure recorded as done. From the moment the tail has the erasure, the lead's
        records are dropped before they are taken; so once the earlier ones are stored (the flush before
        this), one more delete leaves nothing. Erasures read at start are swept only if rows of theirs are
        still stored (``_left_at_start``): nothing of theirs was taken by this process, an earlier sink's.

        Not alongside ``forget``'s own deletion: both would rebuild the daily-view keys the lead fed
        (delete them, insert them again from the other leads' rows), and with both deletes before either
        insert the other leads' counts were inserted twice. So the sweep waits (False) until that deletion is
        recorded in ``leadpulse.erasures``, at most ``SWEEP_WAIT_S`` (a ``forget`` whose deletion failed
        records nothing: the sweep then does its work)."""
        run = client_runner(self.client)
        key = (str(record["erasure_id"]), int(record["requested_at"]))
        since = self._sweep_waits.setdefault(key, time.monotonic())
        if recorded_erasure(run, record) is None and time.monotonic() - since < SWEEP_WAIT_S:
            return False
        self._sweep_waits.pop(key, None)
        left = remaining_rows(run, record)
        if not any(left.values()):
            return True
        result = apply_erasure(self.client, record, applied_by="sink")
        log.warning(
            "erasure %s: %d row(s) of the lead stored after forget's delete, deleted now",
            result.erasure_id,
            result.total,
        )
        return True

    def _erased(self, table: str) -> None:
        self.stats.erased += 1
        self.hooks.erased(table, 1)

    # --- rebalance -------------------------------------------------------------------------------------
    async def _apply_rebalance(self) -> None:
        assert self.consumer is not None
        listener = self._listener
        if listener.revoked:
            # Uncommitted batches of revoked partitions are dropped, not flushed: their next owner re-reads
            # them from the committed offset and skips whatever part of them an earlier insert stored.
            # A batch in flight cannot be dropped: its insert is let finish first, as if it had been
            # written before the rebalance was noticed.
            revoked, listener.revoked = listener.revoked, set()
            if self.writing is not None:
                await self._settle_write()
            batches = [*self.sink.closed, *self.sink.batches.values()]
            if any(tp in revoked for batch in batches for tp in batch.segments):
                log.info("rebalance: dropping %d uncommitted batch(es)", self.sink.clear())
                self.retry_at = None
                self.consumer.resume(*self.consumer.assignment())
            for tp in revoked:
                self.intake.recent.drop_partition(tp)
                self.next_offsets.pop(tp, None)
                self.committed.pop(tp, None)
                self.resume.pop(tp, None)
                self.resume_pending.pop(tp, None)
        self.stats.assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        if listener.assigned:
            assigned, listener.assigned = listener.assigned, set()
            if self.retry_at is not None:  # a back-off no revocation ended (an erasure's) holds them too
                self.consumer.pause(*self.consumer.assignment())
            committed = await self._load_commits(assigned)  # first: the gaps are looked for above them
            try:
                kept = await self._stored_positions(assigned)
                known = {tp: offset for tp, offset in kept.items() if tp in committed}
                points = await asyncio.to_thread(self.positions.resume_points, known, committed)
            except Exception as exc:  # ClickHouse away or busy: read at each partition's first fetch
                log.warning("stored positions not read at assignment, read at the first fetch: %s", exc)
                self.hooks.unavailable()
                self.resume_pending.update(dict.fromkeys(assigned))
                return
            self.resume_pending.update({tp: offset for tp, offset in kept.items() if tp not in committed})
            self.resume.update(points)

    async def _stored_positions(self, assigned: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The highest stored offset of each of ``assigned`` that has rows, after the same-log check."""
        stored = await asyncio.to_thread(self.positions.stored_for, assigned)
        return await self.positions.same_log_only(stored)

    async def _load_commits(self, assigned: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The group's committed offset of each newly assigned partition, so the lag metric is right from
        the start (it counted from 0 for a partition with nothing new since a restart: a false lag of the
        partition's whole length, and a false LeadpulseSinkStalled), and so that the stored rows' gaps are
        looked for only above it. Returned: those found (none for a partition without a commit, or when the
        coordinator does not answer: its gaps are then looked for from its first fetched offset,
        ``_resume_from_first_fetch``)."""
        assert self.consumer is not None
        found = await group_commits(self.consumer, (TopicPartition(t, p) for t, p in assigned)) or {}
        for tp, offset in found.items():
            self.committed.setdefault((tp.topic, tp.partition), offset)
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}

    # --- records -----------------------------------------------------------------------------------------
    def _take(self, tp: TopicPartition, messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        key_tp = (tp.topic, tp.partition)
        resume = self.resume.get(key_tp)
        if resume is not None and resume.skip_through >= 0 and messages:
            assert self.consumer is not None
            if not check_same_log(tp, resume.skip_through, self.consumer.highwater(tp)):
                self.resume.pop(key_tp, None)
                resume = None
        if messages and messages[0].offset < self.committed.get(key_tp, messages[0].offset + 1):
            # Where the group's position started: committing it again would be a no-op. (Also when the
            # position went back below the loaded commit: a reset to a new, shorter log must commit again.)
            self.committed[key_tp] = messages[0].offset
        self.stats.consumed += len(messages)
        erasures = self.erasures if self.erasures is not None and self.erasures.active else None
        # Offsets from here on are not stored yet (this call's records, an earlier unwritten batch's):
        # a copy of an id first taken there is stored too, since that first copy may yet be refused.
        first_offset = messages[0].offset if messages else 0
        unwritten = min(self.sink.open_offsets().get(key_tp, first_offset), first_offset)
        self.intake.take(
            tp,
            messages,
            resume=resume,
            unwritten=unwritten,
            erasures=erasures,
            next_offsets=self.next_offsets,
        )

    def _duplicate(self, table: TableSpec) -> None:
        self.stats.duplicates += 1
        self.hooks.duplicate(table.table)

    async def _flush(self, force: bool = False) -> None:
        """Write the due batches, oldest first, one insert at a time: each partition's batches are stored in
        offset order (what a restart finds stored is then mostly a prefix: few gaps to list and take again,
        ``sinks.resume_point``). The insert runs in a worker thread while the loop fetches and takes records
        into fresh batches; it is awaited once it is done, when the next batch is due (so at most one waits
        behind it) or when forced. A batch that failed stays first and is re-sent before anything newer
        (awaited)."""
        while True:
            if self.writing is not None:
                if not (force or self.writing[1].done() or self.sink.due() or self.retry_at is not None):
                    break  # (a re-send after a back-off is awaited: the partitions are paused meanwhile)
                await self._finish_write()  # raises SinkBackpressure
            for batch in self.sink.due(force=force):
                self.sink.close(batch)
            if not self.sink.closed or self._listener.revoked:
                break  # (a revocation waits to be applied: its partitions may have a new owner already)
            batch = self.sink.closed[0]
            self.writing = (batch, asyncio.ensure_future(asyncio.to_thread(self.sink.write, batch)))
            if not force:
                break
        if self.writing is None and not self.sink.closed:
            self._resume()
        await self._commit()

    def _resume(self) -> None:
        """End a back-off: the batch that failed is stored (or there was none in flight)."""
        if self.retry_at is not None:
            self.retry_at = None
            assert self.consumer is not None
            self.consumer.resume(*self.consumer.assignment())

    async def _finish_write(self) -> None:
        """Wait for the insert in flight; count its rows and dead-letter those ClickHouse rejected. On
        ``SinkBackpressure`` the batch stays first among the closed ones, to be re-sent identical.

        ``writing`` names the insert until it has ended, also while this awaits it: a rebalance that comes
        meanwhile (the loop waits here when the next batch is due) must see it and hold the partitions."""
        assert self.writing is not None
        batch, insert = self.writing
        try:
            rejected = await insert
        finally:
            self.writing = None
        self.sink.discard(batch)
        table = batch.table.table
        self.stats.inserted[table] = self.stats.inserted.get(table, 0) + batch.size - len(rejected)
        for bad in rejected:
            # Not stored, so a corrected re-send of it is not a duplicate.
            if batch.table.keyed_by_id and bad.value is not None:
                record_id = (
                    event_head(bad.value[HEADER_LEN:])[0]  # may not decode: read like the fast path
                    if batch.table is EVENTS
                    else self.positions.first_column((bad.topic, bad.partition), bad.offset, bad.value)
                )
                if record_id is not None:
                    self.intake.recent.forget((bad.topic, bad.partition), record_id, bad.offset)
            self._dead_letter(
                bad.topic,
                bad.partition,
                bad.offset,
                bad.key,
                bad.value,
                "sink",
                bad.error_type,
                bad.reason,
            )
        self.stats.last_success = time.time()
        self._resume()

    def _dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        stage: str,
        error_type: str,
        reason: str,
    ) -> None:
        self.dead_letters.send(topic, partition, offset, key, value, stage, error_type, reason)
        self.stats.dead_lettered += 1
        self.hooks.dead_lettered(spec_for(topic, self.settings.topic_prefix).name, stage)

    async def _commit(self) -> None:
        """Commit, per partition, the offset below which everything is stored or dead-lettered."""
        assert self.consumer is not None
        held = self.sink.open_offsets()
        todo: dict[TopicPartition, int] = {}
        for key_tp, next_offset in self.next_offsets.items():
            safe = min(next_offset, held.get(key_tp, next_offset))
            if self.committed.get(key_tp, -1) < safe and key_tp in self.stats.assigned:
                todo[TopicPartition(*key_tp)] = safe
        if not todo:
            return
        await self.dead_letters.flush()  # dead letters durable before skipping them
        try:
            await commit(self.consumer, todo)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # A rebalance moved the partitions: their next owner resumes from the stored rows.
            log.warning("offset commit refused (%s); will be retried or re-read by the next owner", exc)
            return
        for tp, offset in todo.items():
            self.committed[(tp.topic, tp.partition)] = offset
        self.stats.commits += 1
        self.lag.report(self.consumer, self.committed)
