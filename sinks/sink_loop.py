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
  (``sinks.sink_rebalance``), so that their next owner's resume point counts it;
- records of leads erased with ``leadpulse forget`` (the erasure log, ``streams.erasures``) are dropped
  before insert, so a replay cannot bring them back; with embedded ClickHouse the sink owns the engine and
  also deletes the lead's stored rows when an erasure arrives (``sinks.erase``, ``sinks.sink_erasures``).
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
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from clickhouse_connect.driver.client import Client

from schemas.registry import SchemaRegistry, default_registry
from sinks.batch import BatchPolicy, ClickHouseBatchSink, Rejected, SinkBatch
from sinks.dead_letters import DeadLetters
from sinks.errors import SinkBackpressure
from sinks.lag_report import LagReport
from sinks.recent_ids import RecentIds
from sinks.record_intake import SINK_TOPICS, RecordIntake
from sinks.resume_point import ResumePoint
from sinks.rows import TableSpec
from sinks.sink_erasures import SinkErasures
from sinks.sink_hooks import SinkHooks
from sinks.sink_rebalance import RebalanceListener, apply_rebalance, resume_from_first_fetch
from sinks.sink_rejects import dead_letter_rejected
from sinks.stored_positions import StoredPositions, check_same_log
from streams.broker import aiokafka_client_config, group_timeouts
from streams.erasures import ErasureLog
from streams.kafka_close import STOP_COMMIT_TIMEOUT_S, commit, start_unless_stopped, stop_consumer
from streams.settings import Settings
from streams.stoppable import finished_before_stop
from streams.topics import spec_for

log = logging.getLogger(__name__)


#: Catalogue name of the sink's consumer group, and its ``group`` label on the lag metric whatever the prefix
#: (LeadpulseSinkStalled matches ``group="leadpulse-sink"``; the group itself carries the topic prefix).
SINK_GROUP = "leadpulse-sink"


#: Seconds to wait before fetching again the records of partitions whose resume point ClickHouse could not
#: give at their first fetch (``sinks.sink_rebalance.resume_from_first_fetch``).
RESUME_RETRY_S = 5.0


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
        # first fetch tells where the group's position is (``resume_from_first_fetch``); None when
        # ClickHouse did not answer at assignment (read at the first fetch too).
        self.resume_pending: dict[tuple[str, int], int | None] = {}
        self.retry_at: float | None = None
        self.writing: tuple[SinkBatch, asyncio.Future[list[Rejected]]] | None = None  # the insert in flight
        self.max_poll_records = max_poll_records
        self.fast_path = fast_path
        self._listener = RebalanceListener(lambda: None if self.writing is None else self.writing[1])
        self.lag = LagReport(self.hooks, SINK_GROUP, settings.topic_prefix)
        self.positions = StoredPositions(settings, client, self.registry, self.email_key)
        self.dead_letters = DeadLetters(settings, self.registry)
        self.consumer: AIOKafkaConsumer | None = None
        self.stopping: Callable[[], bool] = lambda: False  # the stop's ``is_set`` once ``run_async`` runs
        # Erasures: read at start, tailed while running; applied to ClickHouse here when this process owns
        # the embedded engine. With a server, `leadpulse forget` deletes on the server itself, and the sink
        # only sweeps what it stored of the lead around that moment (``sinks.sink_erasures``).
        self.erasures: ErasureLog | None = None
        self.apply_erasures = settings.embedded_clickhouse
        self.erasing = SinkErasures(self)
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
        self.stopping = stop.is_set
        self.erasures = ErasureLog(self.settings)
        # First: an aiokafka client never started still complains "Unclosed". With the broker hung each step
        # of the read waits 30-40 s: a stop meanwhile ends it (ErasureLog.start closes its consumer), as the
        # worker's and the notifier's (tests/faults/test_sink_start_broker_hung.py: SIGTERM took 38-90+ s).
        if not await finished_before_stop(self.erasures.start(), stop.is_set):
            log.info("sink stopped while reading the erasure log (nothing consumed)")
            return
        if not self.apply_erasures:
            # Read at start: nothing of those leads is taken by this process, but an earlier sink may have
            # stored rows of them after forget's delete; one query finds those
            # (``SinkErasures._left_at_start``). Taken here, before the tail task first runs (no await since
            # start() returned), not at the first step: a first step that backs off before it looks for
            # erasures (a resume point ClickHouse cannot give) took records, and an erasure arriving
            # meanwhile was counted as read at start.
            self.erasing.read_at_start = self.erasures.drain_new()
        self.consumer = self.group_consumer(config)
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

    def group_consumer(self, security: dict[str, Any]) -> AIOKafkaConsumer:
        """The sink's group member; its timeouts follow the broker ``self.erasures`` found at start."""
        assert self.erasures is not None
        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **group_timeouts(self.erasures.tansu),
            **security,
        )

    async def step(self, poll_ms: int = 200) -> None:
        assert self.consumer is not None
        if self.retry_at is not None:
            wait = self.retry_at - time.monotonic()
            if wait > 0:
                # Paused: nothing comes back, except from partitions assigned in the same call (a new
                # assignment starts unpaused): taken, never dropped, since the position moved past them.
                records = await self.consumer.getmany(timeout_ms=int(min(wait, 0.5) * 1000))
                await apply_rebalance(self)
                await self._take_fetched(records)
                await self.lag.report_due(self.consumer, self.committed)
                return
            # No fetch this step (the failed batch is re-sent first), so apply here a rebalance noted since
            # the last one: ``_flush`` starts no insert while a revocation waits, and only this applies it.
            await apply_rebalance(self)
        else:
            records = await self.consumer.getmany(timeout_ms=poll_ms, max_records=self.max_poll_records)
            await apply_rebalance(self)
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
        # (a partition given up is no longer pending)
        left = await resume_from_first_fetch(self, records, RESUME_RETRY_S)
        for tp, messages in records.items():
            if (tp.topic, tp.partition) in self.stats.assigned and (tp.topic, tp.partition) not in left:
                self._take(tp, messages)

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
        swept yet are swept after that store (``SinkErasures.at_shutdown``)."""
        try:
            await self._flush(force=True)
        except SinkBackpressure as exc:
            log.warning("shutdown with records neither stored nor dead-lettered; re-read on restart: %s", exc)
            return
        if self.apply_erasures:  # embedded: the next start applies what is not applied yet
            return
        await self.erasing.at_shutdown()

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

    # --- erasures (``sinks.sink_erasures``) -------------------------------------------------------------
    async def _apply_erasures(self) -> None:
        """The step's erasure work: a method of the loop's, so that a test can make it fail."""
        await self.erasing.apply()

    @property
    def _pending_erasures(self) -> list[dict[str, Any]]:
        """Erasures not done with yet (tests wait on it)."""
        return self.erasing.pending

    def _erased(self, table: str) -> None:
        self.stats.erased += 1
        self.hooks.erased(table, 1)

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
        dead_letter_rejected(self, batch, rejected)
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
        # A commit in flight when the stop comes gives way at once: the drain's commits the same offsets
        # again, within ``STOP_COMMIT_TIMEOUT_S``. With the broker killed mid-backlog the two waited 10 s
        # each (tests/faults/test_shutdown_broker_down.py).
        stopping = self.stopping()
        try:
            if not await finished_before_stop(
                commit(self.consumer, todo, STOP_COMMIT_TIMEOUT_S if stopping else None),
                None if stopping else self.stopping,
            ):
                log.info("stopped while a commit waited on the broker: the stop's last commit tries again")
                return
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # A rebalance moved the partitions: their next owner resumes from the stored rows.
            log.warning("offset commit refused (%s); will be retried or re-read by the next owner", exc)
            return
        for tp, offset in todo.items():
            self.committed[(tp.topic, tp.partition)] = offset
        self.stats.commits += 1
        self.lag.report(self.consumer, self.committed)
