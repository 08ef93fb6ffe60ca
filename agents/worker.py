"""The lead worker: a batch consumer around the pure core (decode → stitch → score → stage → SLA → emit).

Why not Faust's stream path (it was the first version; measured, see docs/scoring.md "Worker runtime"):
- it lost records after a restart: records fetched while table recovery ran were dropped when Faust then
  seeked its stream partitions to the committed offsets (faust-streaming #216/#221 family);
- its per-message machinery cost ~225 µs/event before our code ran, capping a worker near 1k events/s.

What replaces it, one loop per process:
- one consumer group over the six inputs and the internal identity topic, range-assigned, so partition *p*
  of every topic (one lead's events) lands on the same worker;
- each lead's whole state in memory for the owned partitions, durable in the compacted
  ``leadpulse.internal.lead_state`` topic (partition = the lead's input partition), restored on assignment
  before any of the partition's records are processed;
- per batch: outputs and dead letters sent and acknowledged → each touched lead's state written once and
  acknowledged → offsets committed. A crash anywhere repeats work, never loses it: repeated outputs carry
  the same deterministic ids (dropped downstream), repeated events are recognised by the state's seen ids.
- the last two steps are a checkpoint of all batches since the last one (agents/worker_checkpoint.py): at
  most every ``LEADPULSE_WORKER_COMMIT_INTERVAL_S``, each lead's state written once, then the offsets
  committed, while the next batches are fetched and scored (``LeadWorker.checkpoint_now``). Only the
  outputs' acknowledgement is on the path from event to score. A checkpoint's writes finish before the next
  checkpoint's start, and everything pending is written before anything else writes states, reads them back
  or moves partitions (``write_pending``: the SLA scan, erasures, a rebalance, the stop, a reload).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from agents.alignment import TopicAligner
from agents.kafka_batches import BatchSender, caught_up
from agents.lead_store import LeadStore
from agents.rules import Rules
from agents.worker_batch import NotWritable, RecordTooLarge, send
from agents.worker_checkpoint import Checkpoint
from agents.worker_clients import GROUP, check_broker, worker_consumer, worker_producer
from agents.worker_clock import now_ms
from agents.worker_erasures import ErasureSource, apply_erasures
from agents.worker_rebalance import (
    WorkerRebalance,
    gave_up_restore,
    load_commits,
    refetch,
    reload,
    unless_stopped,
)
from agents.worker_records import process
from agents.worker_sla_scan import ScanFailure, scan
from schemas.fast_codec import codec_for
from schemas.registry import SchemaRegistry, default_registry
from streams.backoff import Backoff
from streams.broker import aiokafka_client_config
from streams.kafka_close import commit, start_client, start_unless_stopped, stop_clients, stop_producer
from streams.metrics import LagGauge, Metrics, consumer_lags
from streams.settings import Settings
from streams.stoppable import finished_before_stop
from streams.topics import (
    ACCOUNTS,
    BY_SCHEMA,
    DLQ,
    IDENTITY,
    INPUTS,
    LEAD_STATE,
)

log = logging.getLogger(__name__)

BATCH_MAX = 5000
IDLE_AFTER_S = 30.0  # caught up this long: SLA timers follow the wall clock again (worker_clock.py)
ALIGN_WAIT_S = 2.0  # longest a partition's records wait for a co-partitioned topic that is behind
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0  # back-off before starting over from what is durable
# How long a batch in flight may still take once the worker is told to stop (a healthy broker takes
# milliseconds); then it is given up, uncommitted. With the client closes (at once, each bounded by
# streams.kafka_close.STOP_TIMEOUT_S, the producer's PRODUCER_STOP_S) the worker is gone in ~16 s with the
# broker hung (the consumer's close bounds it; 25 s allowed), in ~4.5 s with it dead.
STOP_GRACE_S = 3.0
# How long the stop waits for the producer's unacknowledged records. Every send was awaited (or given up,
# uncommitted) before the clients close, so on a healthy broker there are none, and what a dead or hung
# broker still holds is processed again after the restart: with the close's general 10 s bound, a worker
# whose broker was killed mid-batch took 13.5 s to stop (tests/faults/test_shutdown_broker_down.py).
PRODUCER_STOP_S = 1.0


class LeadWorker:
    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        metrics: Metrics | None = None,
        registry: SchemaRegistry | None = None,
        scan_interval_s: float = 2.0,
        erasures: ErasureSource | None = None,
        idle_after_s: float = IDLE_AFTER_S,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.metrics = metrics
        self.lag_gauge = LagGauge(metrics.consumer_lag, GROUP) if metrics is not None else None
        self.registry = registry or default_registry()
        self.codec = codec_for(self.registry)  # compiled Avro, fastavro's results (schemas/fast_codec.py)
        self.scan_interval_s = scan_interval_s
        self.erasures = erasures
        self.store = LeadStore()
        self.lock = asyncio.Lock()
        self.restoring = True
        self.restored_once = False  # the first assignment's states loaded: ready from then on
        self.identity_topic = settings.topic(IDENTITY.name)
        self.accounts_topic = settings.topic(ACCOUNTS.name)
        self.state_topic = settings.topic(LEAD_STATE.name)
        self.dlq_topic = settings.topic(DLQ.name)
        self.input_topics = [settings.topic(s.name) for s in INPUTS] + [
            self.identity_topic,
            self.accounts_topic,
        ]
        # a contract topic carries its own schema only (the internal hops carry any)
        self.input_schema = {settings.topic(s.name): s.schema for s in INPUTS}
        self.output_topics = {
            schema: settings.topic(spec.name) for schema, spec in BY_SCHEMA.items() if spec.role == "output"
        }
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.tansu = False
        # Event-time watermark for the SLA scan: the newest event time seen and when (wall clock) it was.
        self.watermark_ms: int | None = None
        self.watermark_seen_at_ms = 0
        # Wall time since which fetches have come back empty (caught up), None while records are arriving.
        self.idle_since_ms: int | None = None
        self.idle_after_ms = int(idle_after_s * 1000)
        self._partitions_per_topic: dict[str, int] = {}
        self.sender: BatchSender | None = None
        self._next_scan = 0.0
        self._next_lag = 0.0
        self.generation = 0  # assignments seen; a batch fetched under an older one is dropped
        self.committed: dict[TopicPartition, int] = {}
        # Input records held back until co-partitioned topics catch up (agents/alignment.py), and the
        # partitions not read meanwhile, so that the next reads take the topic that is behind.
        self.aligner = TopicAligner((settings.topic(s.name) for s in INPUTS), ALIGN_WAIT_S)
        self.held_back: set[TopicPartition] = set()
        self.commits_to_load: set[TopicPartition] = set()  # assigned, their group offsets not read yet
        self.left_group = False  # the broker acknowledged our LeaveGroup at stop
        self.gave_up_at_stop = False  # writes still waiting on the broker at the stop were given up
        self.started = False  # got its first assignment (a stop during the group join gives that up)
        # The states in memory cannot be trusted (a failed restore or write): nothing is processed until
        # the owned partitions are reloaded from what is durable (worker_rebalance.reload), after a back-off.
        self.reload_pending = False
        self.retry_at = 0.0
        self.retry_backoff = Backoff(RETRY_FIRST_S, RETRY_MAX_S)
        # Records the core raised for, by (topic, partition, offset): dead-lettered when read again
        # (worker_failures.core_raised); forgotten once committed past.
        self.failed_in_core: dict[tuple[str, int, int], Exception] = {}
        # Leads the SLA scan failed for, retried after a back-off (worker_sla_scan._failed); both forgotten
        # for partitions that move away (worker_rebalance.forget_moved).
        self.scan_failed: dict[bytes, ScanFailure] = {}
        # Parts of erasures this worker dead-lettered, (lead id, account domain or ""): not again at each
        # restore of this process (worker_erasures._dead_letter); kept across rebalances.
        self.erasure_letters: set[tuple[str, str]] = set()
        # run()'s stop: a restore waiting on the broker gives way to it (worker_rebalance.unless_stopped)
        self.stop_event: asyncio.Event | None = None
        # Batches scored since the last checkpoint (outputs acknowledged, states and offsets not written), and
        # the last checkpoint's writes, running while the next batches are fetched and scored (None: settled).
        self.checkpoint = Checkpoint()
        self.commit_interval_s = settings.worker_commit_interval_s
        self.writing: asyncio.Task[None] | None = None
        # A checkpoint's writes failed or were given up: what is pending after it must not be written (its
        # offsets would commit past records whose states never reached the changelog): checkpoint_now drops
        # it, until the reload, which reads everything again, clears this.
        self.checkpoint_lost = False
        # Per partition, the offset up to which this worker counted records in its metrics (when their
        # batch's outputs were acknowledged): a batch processed again is not counted again (worker_records).
        self.counted_to: dict[TopicPartition, int] = {}

    # -- lifecycle -------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        self.stop_event = stop
        # Each start step waits on the broker (kafka-python's 30 s bootstrap timeout, aiokafka's 40 s): a
        # stop meanwhile ends it at once, nothing consumed yet. Found by
        # tests/faults/test_worker_start_broker_hung.py (SIGTERM took up to 38 s, then exit 1).
        # The erasure log (started first: worker_process.serve_worker) knows whether the broker is Tansu: not
        # asked a second time (a kafka-python admin client for the same answer).
        checking = asyncio.ensure_future(check_broker(settings, getattr(self.erasures, "tansu", None)))
        if not await finished_before_stop(checking, stop):
            log.info("worker stopped before its topics were checked (nothing consumed)")
            return
        self.tansu = checking.result()
        security = aiokafka_client_config(settings)
        self.producer = worker_producer(settings, security)
        if not await finished_before_stop(start_client(self.producer), stop):  # closed by start_client
            log.info("worker stopped before its producer started (nothing consumed)")
            return
        self.sender = BatchSender(self.producer)
        producer_stopped = False
        try:
            # built only now: an aiokafka client that is never started still complains "Unclosed" at exit
            self.consumer = worker_consumer(settings, self.tansu, security)
            self.consumer.subscribe(self.input_topics, listener=WorkerRebalance(self))
            group, topics = settings.topic_prefix + GROUP, len(self.input_topics)
            log.info("joining consumer group %s on %d topics", group, topics)
            if not await start_unless_stopped(self.consumer, stop.is_set):
                log.info("worker stopped before its first partition assignment (nothing consumed)")
                return
            self.started = True
            try:
                while not stop.is_set():
                    await self.poll_once()
                await self._write_at_stop()
            finally:
                if self.writing is not None:  # poll_once raised: the checkpoint's offsets are not committed
                    self.writing.cancel()
                # Leaves the group, so the partitions move at once (unless the broker does not answer), and
                # flushes the producer, both at once (streams/kafka_close.py). Cancelled meanwhile, the
                # producer is closed again below.
                try:
                    self.left_group, _flushed = await stop_clients(
                        self.consumer, self.producer, PRODUCER_STOP_S
                    )
                except Exception:
                    producer_stopped = True
                    raise
                producer_stopped = True
        finally:
            if not producer_stopped:
                await stop_producer(self.producer, PRODUCER_STOP_S)

    def start_over(self, exc: BaseException) -> None:
        """Process nothing more on the states in memory: back off, then reload (see ``reload_pending``)."""
        self.reload_pending = True
        delay = self.retry_backoff.next()
        self.retry_at = time.monotonic() + delay
        log.warning(
            "%s: %s; reloading the owned partitions from the changelog and the committed offsets in %.1f s",
            type(exc).__name__,
            exc,
            delay,
        )

    async def _reload(self) -> None:
        # What is pending is written first (the batches before the one that failed: their encoded states,
        # not the states in memory), unless a checkpoint before it was lost; and the writes are waited for: a
        # commit landing after the changelog was read would skip records whose states the reload did not see.
        try:
            await unless_stopped(self, self.write_pending())  # (a stop meanwhile: dropped, as at a crash)
        except Exception as exc:
            log.info("what was pending before the reload was not written either (%s)", exc)
        self.checkpoint, self.checkpoint_lost = Checkpoint(), False
        try:
            if not await unless_stopped(self, reload(self)):
                gave_up_restore(self)
                return  # stopping: still pending
        except KafkaError as exc:
            self.start_over(exc)
            return
        self.reload_pending = False
        # (the back-off is reset by a batch written, worker_batch.flush: a reload that works says nothing of
        # the write that failed, and a refusal for good was retried every 0.5 s, a full reload each time)
        log.info("reloaded the owned partitions; processing from the committed offsets")

    async def poll_once(self) -> None:
        assert self.consumer is not None
        wait = self.retry_at - time.monotonic()
        if wait > 0:  # backing off, outside the lock: a rebalance meanwhile is applied
            await asyncio.sleep(min(0.2, wait))
            return
        timeout = max(0.0, min(0.2, self._next_scan - time.monotonic()))
        generation = self.generation
        # Not pause(): aiokafka drops a paused partition's fetched records, and they would be fetched again.
        held_back = self.held_back
        reading = [tp for tp in self.consumer.assignment() if tp not in held_back] if held_back else []
        fetched = await self.consumer.getmany(*reading, timeout_ms=int(timeout * 1000), max_records=BATCH_MAX)
        if fetched or self.aligner.held:
            self.idle_since_ms = None
        elif self.idle_since_ms is None:
            self.idle_since_ms = now_ms()
        async with self.lock:
            if self.reload_pending:  # what was fetched comes again: reload seeks to the committed offsets
                await self._reload()
                return
            try:
                if not await unless_stopped(self, self._under_lock(generation, fetched), STOP_GRACE_S):
                    self.gave_up_at_stop = True
                    log.warning(
                        "stopped while a batch's writes waited on the broker: given up after %g s, nothing "
                        "committed past them (they are processed again after the restart)",
                        STOP_GRACE_S,
                    )
            except (KafkaError, RecordTooLarge, NotWritable) as exc:
                # (RecordTooLarge: an erasure's state over the record size limit, which it does not grow;
                # NotWritable: not expected, an erasure's unwritable accounts are dead-lettered in
                # worker_erasures, a batch's own handled in process, the SLA scan's in worker_sla_scan.scan.)
                # Writes the broker did not acknowledge (away past the producer's request timeout): nothing
                # was committed past them. Exiting made a crash loop of a broker outage; going on from the
                # states in memory would lose the outputs (they already count the events as seen).
                self.start_over(exc)

    async def _under_lock(self, generation: int, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        if self.commits_to_load:
            assigned, self.commits_to_load = self.commits_to_load, set()
            await load_commits(self, assigned)
        if self.writing is not None and self.writing.done():
            await self.settle()  # its failure, if any, starts over now, not at the next batch
        if self.erasures is not None:
            erasures = self.erasures.drain_new()
            if erasures:
                # (its tombstones after the pending state writes; failed, the reload purges erased leads)
                await self.write_pending()
                await apply_erasures(self, erasures)
        if generation == self.generation:
            ready = await self._aligned(fetched)
            if ready:
                await process(self, ready)
                if self.reload_pending:  # the core raised: no scan on the states of the dropped pass
                    return
        elif fetched:
            await refetch(self, fetched)
        if time.monotonic() >= self._next_scan:
            self._next_scan = time.monotonic() + self.scan_interval_s
            await self.write_pending()  # (the scan writes the states it fires for itself)
            await scan(self)
        elif self.checkpoint.due(self.commit_interval_s):
            await self.checkpoint_now()
        if self.metrics and time.monotonic() >= self._next_lag:
            self._next_lag = time.monotonic() + 5.0
            self._report_lag()

    async def _aligned(
        self, fetched: dict[TopicPartition, list[ConsumerRecord]]
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """What to process now: internal hops at once, input records as far as every co-partitioned input
        topic has been read (agents/alignment.py). Partitions whose records wait are not read meanwhile
        (``held_back``), so the next reads bring the topic that is behind instead of more of what is held."""
        assert self.consumer is not None
        ready = self.aligner.add(fetched)
        self.held_back = set()
        if self.aligner.held:
            consumer = self.consumer
            released, self.held_back = self.aligner.release(
                consumer.assignment(), lambda tp: caught_up(consumer, tp), time.monotonic()
            )
            ready.update(released)
        return ready

    # -- a batch (its records: agents/worker_records.py) ---------------------------------------------------

    async def checkpoint_now(self) -> None:
        """Write what the batches since the last checkpoint left (``self.checkpoint``): their states, then
        commit their offsets, in a task that runs while the next batches are fetched and scored.

        Why in the background: each batch waited for its state wave and its commit before the next fetch.
        The durability order holds: every batch in the checkpoint has its outputs acknowledged, its offsets
        are committed only once its states are, and the last checkpoint's writes finish first, so states and
        commits keep the batches' order. After a lost checkpoint what is pending is dropped, not written
        (``checkpoint_lost``)."""
        if self.checkpoint_lost:
            self.checkpoint = Checkpoint()
        pending = self.checkpoint
        if not pending:
            return
        await self.settle()
        self.checkpoint = Checkpoint()
        self.writing = asyncio.ensure_future(self._state_then_commit(pending))

    async def _state_then_commit(self, pending: Checkpoint) -> None:
        await send(self, list(pending.records.values()))
        self.retry_backoff.reset()  # the broker takes writes again
        await self._commit(pending.offsets)

    async def settle(self) -> None:
        """Wait for the last checkpoint's writes (``checkpoint_now``); raise what they raised (a state wave
        the broker did not acknowledge: the caller starts over, nothing committed past it)."""
        writing, self.writing = self.writing, None
        if writing is None:
            return
        try:
            await writing
        except BaseException:  # (also given up at a stop: cancelled)
            self.checkpoint_lost = True
            raise

    async def write_pending(self) -> None:
        """Everything scored written and committed (before the SLA scan, erasures, a rebalance, a reload,
        the stop)."""
        await self.checkpoint_now()
        await self.settle()

    async def _write_at_stop(self) -> None:
        """What is pending, given ``STOP_GRACE_S`` as a batch in flight is (``poll_once``); nothing after a
        lost checkpoint: processed again after the restart."""
        if not self.checkpoint and self.writing is None:
            return
        try:
            if not await finished_before_stop(self.write_pending(), self.stop_event, grace_s=STOP_GRACE_S):
                self.gave_up_at_stop = True
                log.warning(
                    "stopped while the last states' writes waited on the broker: given up after %g s, their "
                    "offsets not committed (processed again after the restart)",
                    STOP_GRACE_S,
                )
        except KafkaError as exc:
            self.gave_up_at_stop = True
            log.warning("the last states' writes failed at the stop (%s): offsets not committed", exc)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        try:
            await commit(self.consumer, offsets)
            self.committed.update(offsets)
            if self.failed_in_core:
                self.failed_in_core = {
                    (topic, partition, offset): exc
                    for (topic, partition, offset), exc in self.failed_in_core.items()
                    if offset >= offsets.get(TopicPartition(topic, partition), -1)
                }
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The partitions moved: their next owner re-reads the batch; its state already has these events.
            log.warning("offset commit refused (%s); the next owner re-reads the batch", exc)

    def _unprefixed(self, topic: str) -> str:
        """Metric labels use catalogue names, so dashboards work whatever the prefix."""
        prefix = self.settings.topic_prefix
        return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic

    # -- ops ---------------------------------------------------------------------------------------------

    def _report_lag(self) -> None:
        assert self.consumer is not None and self.lag_gauge is not None
        done = self.committed
        self.lag_gauge.report(consumer_lags(self.consumer, lambda tp: done.get(tp, 0), self._unprefixed))

    def ready(self) -> tuple[bool, dict[str, Any]]:
        assigned = len(self.consumer.assignment()) if self.consumer else 0
        # joined the group and restored what it got (an extra worker with no partitions is ready too: it
        # stands by for a rebalance)
        # ... and then stays ready through later rebalances' reloads (every worker of the group reloads):
        # a worker reloading its share is doing its job, and flapping to 503 on every scale step held
        # PodDisruptionBudgets and rollouts back. "restoring" in the body still says it.
        return (self.generation > 0 and (self.restored_once or not self.restoring)), {
            "restoring": self.restoring,
            "assigned_partitions": assigned,
            "leads_in_memory": len(self.store),
        }
