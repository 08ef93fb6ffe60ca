"""The sink loop across rebalances: the group listener, the revoked partitions' uncommitted batches dropped,
and where each assigned partition resumes (its committed offset and stored rows, read at assignment or, when
they could not be read then, at its first fetch).

Split out of ``sinks.sink_loop`` (one job a module); the loop calls ``apply_rebalance`` between fetches and
``resume_from_first_fetch`` on what a fetch returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from sinks.errors import SinkBackpressure
from streams.kafka_close import group_commits

if TYPE_CHECKING:
    from sinks.sink_loop import ClickHouseSinkLoop

log = logging.getLogger("sinks.sink_loop")  # the name it logged under before the split: log lines unchanged


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Records what a rebalance changed; the loop acts on it between fetches (see ``apply_rebalance``).

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


async def apply_rebalance(loop: ClickHouseSinkLoop) -> None:
    """Act, between fetches, on what the listener noted: revoked partitions' batches and state dropped,
    assigned ones' committed offsets and resume points read."""
    assert loop.consumer is not None
    listener = loop._listener
    if listener.revoked:
        # Uncommitted batches of revoked partitions are dropped, not flushed: their next owner re-reads
        # them from the committed offset and skips whatever part of them an earlier insert stored.
        # A batch in flight cannot be dropped: its insert is let finish first, as if it had been
        # written before the rebalance was noticed.
        revoked, listener.revoked = listener.revoked, set()
        if loop.writing is not None:
            await loop._settle_write()
        batches = [*loop.sink.closed, *loop.sink.batches.values()]
        if any(tp in revoked for batch in batches for tp in batch.segments):
            log.info("rebalance: dropping %d uncommitted batch(es)", loop.sink.clear())
            loop.retry_at = None
            loop.consumer.resume(*loop.consumer.assignment())
        for tp in revoked:
            loop.intake.recent.drop_partition(tp)
            loop.next_offsets.pop(tp, None)
            loop.committed.pop(tp, None)
            loop.resume.pop(tp, None)
            loop.resume_pending.pop(tp, None)
    loop.stats.assigned = {(tp.topic, tp.partition) for tp in loop.consumer.assignment()}
    if listener.assigned:
        assigned, listener.assigned = listener.assigned, set()
        if loop.retry_at is not None:  # a back-off no revocation ended (an erasure's) holds them too
            loop.consumer.pause(*loop.consumer.assignment())
        committed = await load_commits(loop, assigned)  # first: the gaps are looked for above them
        try:
            kept = await stored_positions(loop, assigned)
            known = {tp: offset for tp, offset in kept.items() if tp in committed}
            points = await asyncio.to_thread(loop.positions.resume_points, known, committed)
        except Exception as exc:  # ClickHouse away or busy: read at each partition's first fetch
            log.warning("stored positions not read at assignment, read at the first fetch: %s", exc)
            loop.hooks.unavailable()
            loop.resume_pending.update(dict.fromkeys(assigned))
            return
        loop.resume_pending.update({tp: offset for tp, offset in kept.items() if tp not in committed})
        loop.resume.update(points)


async def stored_positions(
    loop: ClickHouseSinkLoop, assigned: set[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The highest stored offset of each of ``assigned`` that has rows, after the same-log check."""
    stored = await asyncio.to_thread(loop.positions.stored_for, assigned)
    return await loop.positions.same_log_only(stored)


async def load_commits(
    loop: ClickHouseSinkLoop, assigned: set[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The group's committed offset of each newly assigned partition, so the lag metric is right from
    the start (it counted from 0 for a partition with nothing new since a restart: a false lag of the
    partition's whole length, and a false LeadpulseSinkStalled), and so that the stored rows' gaps are
    looked for only above it. Returned: those found (none for a partition without a commit, or when the
    coordinator does not answer: its gaps are then looked for from its first fetched offset,
    ``resume_from_first_fetch``)."""
    assert loop.consumer is not None
    found = await group_commits(loop.consumer, (TopicPartition(t, p) for t, p in assigned)) or {}
    for tp, offset in found.items():
        loop.committed.setdefault((tp.topic, tp.partition), offset)
    return {(tp.topic, tp.partition): offset for tp, offset in found.items()}


async def resume_from_first_fetch(
    loop: ClickHouseSinkLoop,
    records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    retry_after: float,
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
    any ClickHouse failure (before, the error ended the sink), for ``retry_after`` seconds."""
    if not loop.resume_pending:
        return set()
    firsts = {
        (tp.topic, tp.partition): messages[0].offset
        for tp, messages in records.items()
        if messages and (tp.topic, tp.partition) in loop.resume_pending
    }
    if not firsts:
        return set()
    if loop.writing is not None:  # one statement at a time on the client (a session allows no other)
        await loop._settle_write()
    pending = {key: loop.resume_pending[key] for key in firsts}
    try:
        stored = {key: offset for key, offset in pending.items() if offset is not None}
        unread = {key for key, offset in pending.items() if offset is None}
        if unread:
            stored.update(await stored_positions(loop, unread))
        points = await asyncio.to_thread(loop.positions.resume_points, stored, firsts)
    except Exception as exc:  # ClickHouse away or busy (unknown = retryable, as for inserts)
        assert loop.consumer is not None
        assignment = loop.consumer.assignment()
        for key, offset in firsts.items():
            if TopicPartition(*key) in assignment:
                loop.consumer.seek(TopicPartition(*key), offset)  # fetched again after the back-off
        what = "reading the stored offsets of newly fetched partitions"
        loop.hooks.unavailable()  # as an insert ClickHouse refuses: LeadpulseSinkFailing sees it
        loop._back_off(SinkBackpressure("resume", retry_after, exc, what=what))
        return set(firsts)
    for key in firsts:
        loop.resume_pending.pop(key, None)
    loop.resume.update(points)
    return set()
