"""The worker across rebalances: the group listener, restoring the owned partitions' lead states from the
changelog before any of their records is processed, re-fetching a batch a rebalance overlapped, and loading
the group's committed offsets for the lag metric.

Why every step here takes the worker's lock (the listener) or runs under it (the poll loop): a batch in
flight finishes and commits its offsets before the partitions move.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError

from agents.kafka_batches import Headers, read_to_end
from agents.lead_store import LeadStore, due_from_headers
from agents.worker_erasures import purge_erased
from agents.worker_sla_scan import report_failing
from streams.kafka_close import committed, group_commits
from streams.stoppable import finished_before_stop

if TYPE_CHECKING:
    from agents.worker import LeadWorker

log = logging.getLogger("agents.worker")  # the name it logged under before the split: log lines unchanged


class WorkerRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: LeadWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Waits for the batch in flight, then writes what is pending and commits it before the partitions
        # move. A write that fails commits nothing: the partitions' next owners read those batches again.
        async with self.worker.lock:
            try:
                if not await unless_stopped(self.worker, self.worker.write_pending()):
                    self.worker.gave_up_at_stop = True
                    log.warning("stopped while writing what was pending at a revocation: not committed")
            except Exception as exc:
                self.worker.start_over(exc)
            self.worker.restoring = True
            # held records are not committed: whoever owns the partitions next reads them again
            self.worker.aligner.drop()
            self.worker.held_back.clear()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        async with self.worker.lock:
            self.worker.generation += 1
            # read by the poll loop: a consumer request from inside the rebalance callback could wait on it
            self.worker.commits_to_load = set(assigned)
            forget_moved(self.worker, set(assigned))
            try:
                if not await unless_stopped(
                    self.worker, restore(self.worker, {tp.partition for tp in assigned})
                ):
                    gave_up_restore(self.worker)
                    self.worker.reload_pending = True  # never processed on the partial store
            except Exception as exc:
                # aiokafka logs a listener's exception and carries on: the poll loop would then process the
                # partitions on a partial store, rebuilding each lead it met from nothing. It reloads first.
                self.worker.start_over(exc)


def forget_moved(worker: LeadWorker, assigned: set[TopicPartition]) -> None:
    """Forget what the worker remembers of partitions it no longer owns: records the core raised for
    (``failed_in_core``) and leads the SLA scan failed for (``scan_failed``).

    Why: ``failed_in_core`` was pruned only when this worker committed past an entry, which it never does
    for a partition that moved away, so the entries stayed for the life of the process (and were looked up
    for every record); and if the partition came back after its next owner had moved on, an entry could
    still name a record. ``scan_failed`` held such leads for good. Entries of partitions kept are kept: the
    record is still dead-lettered when read again, the lead's back-off still applies."""
    partitions = {tp.partition for tp in assigned}
    worker.counted_to = {tp: offset for tp, offset in worker.counted_to.items() if tp in assigned}
    if worker.failed_in_core:
        worker.failed_in_core = {
            where: exc
            for where, exc in worker.failed_in_core.items()
            if TopicPartition(where[0], where[1]) in assigned
        }
    if worker.scan_failed:
        worker.scan_failed = {
            key: failure for key, failure in worker.scan_failed.items() if failure.partition in partitions
        }
        report_failing(worker)


async def unless_stopped(worker: LeadWorker, work: Coroutine[Any, Any, None], grace_s: float = 0.0) -> bool:
    """Run ``work`` unless the worker is told to stop first and it has not finished ``grace_s`` later: then
    it is cancelled and False returned (the caller says what was given up).

    Why: a restore runs under the worker's lock (inside the rebalance callback, or the poll loop's reload),
    and its changelog read waits for a broker that does not answer (hung, half-open path) as long as it
    takes; the poll loop, waiting on the lock, never looked at the stop event. SIGTERM during a rebalance
    with the broker away was ignored until the broker answered (87 s in a fault test,
    tests/faults/test_worker_stop_during_restore.py: past any grace period). A restore only reads what is
    durable, so it is given up at once; a batch gets ``grace_s`` to finish (LeadWorker.poll_once)."""
    return await finished_before_stop(work, worker.stop_event, grace_s=grace_s)


def gave_up_restore(worker: LeadWorker) -> None:
    worker.restoring = True
    log.warning(
        "stopped while restoring partitions %s from the changelog (the broker does not answer): the restore "
        "was given up, nothing processed on a partial store",
        sorted(worker.store.partitions),
    )


async def reload(worker: LeadWorker) -> None:
    """Start the owned partitions over from what is durable: their states from the changelog and their
    records from the group's committed offsets (held records dropped: they are not committed either).

    Why: after a failed changelog read, or a batch whose writes the broker did not acknowledge, the states in
    memory may be partial or hold events whose outputs or states never reached the broker (``step`` updates
    states in place); processing on from them would lose those outputs (the events count as seen)."""
    assert worker.consumer is not None
    owned = worker.consumer.assignment()
    worker.aligner.drop()
    worker.held_back = set()
    await restore(worker, {tp.partition for tp in owned})
    ordered = sorted(owned)
    # all at once: a committed-offset read or an offset reset per partition in turn took ~20 s for 64
    offsets = await asyncio.gather(*(committed(worker.consumer, tp) for tp in ordered))
    never = [tp for tp, offset in zip(ordered, offsets, strict=True) if offset is None]
    for tp, offset in zip(ordered, offsets, strict=True):
        if offset is not None:
            worker.consumer.seek(tp, offset)
    if never:
        await worker.consumer.seek_to_beginning(*never)


async def restore(worker: LeadWorker, partitions: set[int]) -> None:
    """Load the owned partitions' states from the changelog, to its end, before processing them.

    Every rebalance reloads everything: with eager rebalancing all partitions are revoked anyway, and
    a partition kept across rebalances may have been owned by someone else in between."""
    worker.restoring = True
    started = time.monotonic()
    worker.store = LeadStore()
    worker.store.partitions = set(partitions)
    if partitions:
        await read_changelog(worker, partitions)
    await purge_erased(worker)
    worker.restoring = False
    worker.restored_once = True
    log.info(
        "restored %d lead states of partitions %s in %.1f s",
        len(worker.store),
        sorted(partitions),
        time.monotonic() - started,
    )


async def read_changelog(worker: LeadWorker, partitions: set[int]) -> None:
    def apply(partition: int, key: bytes, value: bytes | None, headers: Headers) -> None:
        worker.store.restore(partition, key, value, due_from_headers(headers))

    await read_to_end(worker.settings, worker.state_topic, partitions, worker.tansu, apply)


async def refetch(worker: LeadWorker, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> None:
    """A batch from a getmany that a rebalance overlapped: not processed, and fetched again from the
    committed offsets of the partitions still owned.

    Why not just drop it: the fetch may have started under the new assignment, so the consumer's
    position is already past these records; dropped, they would never come back (found by the scale
    1 → 2 → 1 fault test: a whole partition's tail missing). Why not process it: records fetched under
    the old assignment would be processed twice (and a poison record dead-lettered twice)."""
    assert worker.consumer is not None
    owned = worker.consumer.assignment()
    again = [tp for tp in fetched if tp in owned]
    log.info("a rebalance overlapped a fetch: fetching %d partition(s) again from commits", len(again))
    for tp in again:
        try:
            offset = await committed(worker.consumer, tp)
            if offset is None:
                await worker.consumer.seek_to_beginning(tp)
            else:
                worker.consumer.seek(tp, offset)
        except IllegalStateError as exc:  # moved again meanwhile: its next owner reads it
            log.info("no re-fetch of %s[%d] (%s)", tp.topic, tp.partition, exc)
        # Any other KafkaError (no coordinator answered for the committed offset) propagates: the partition
        # is still ours and its position past the records not processed, so skipping it as if it had moved
        # let the next batch commit past them. The worker starts over from the committed offsets instead.


async def load_commits(worker: LeadWorker, assigned: set[TopicPartition]) -> None:
    """The group's committed offset of each assigned partition, so the lag metric is right from the
    start: ``committed`` held only this process's own commits, so after a restart every partition with
    nothing new counted its whole log as lag (and a partition that came back after another worker
    owned it, a stale offset) until the next commit (ops audit)."""
    assert worker.consumer is not None
    worker.committed = await group_commits(worker.consumer, assigned) or {}
