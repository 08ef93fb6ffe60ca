"""The notifier's consumer group: its id, which offsets may be committed while deliveries are in flight,
committing them, where newly assigned partitions start (taking over an earlier release's group), and the lag.

Why apart from delivery (``agents/notifications.py``): delivery decides when a notification is settled;
this decides what that means for the group's offsets, so that a crash re-delivers, never loses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from agents.notifier_progress import ProgressLog, applicable
from streams.broker import aiokafka_client_config
from streams.kafka_close import STOP_COMMIT_TIMEOUT_S, commit, group_commits, start_client, stop_consumer
from streams.metrics import LagGauge, consumer_lags
from streams.settings import Settings
from streams.topics import HOT_LEADS

if TYPE_CHECKING:
    from agents.notifications import Notifier

log = logging.getLogger("agents.notifications")  # the name it logged under before the split: lines unchanged


#: Catalogue name of the notifier's consumer group; the group itself carries LEADPULSE_TOPIC_PREFIX, as the
#: worker's and the sink's do, so that deployments sharing a Kafka cluster never share a group.
GROUP_ID = "leadpulse-notifier"


def notifier_group(settings: Settings) -> str:
    return settings.topic_prefix + GROUP_ID


class PendingOffsets:
    """Which offsets still have deliveries in flight; the committable position is the lowest of them.

    Also which targets finished which offsets above it (``progress``), and what a target finished before a
    restart (``carry``, read back by ``agents/notifier_progress.py``) so that it is not sent again."""

    def __init__(self) -> None:
        self._open: dict[TopicPartition, dict[int, int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._epoch: dict[TopicPartition, int] = {}  # revocations seen per partition
        self._finished: dict[TopicPartition, dict[int, set[str]]] = {}  # offset -> targets done with it
        self._carried: dict[TopicPartition, dict[int, set[str]]] = {}  # the same, from before a restart
        self._carried_at: dict[TopicPartition, int] = {}  # when that progress was written (ms)

    def epoch(self, tp: TopicPartition) -> int:
        """What a delivery added now reports back to ``done`` (a revocation starts a new epoch)."""
        return self._epoch.get(tp, 0)

    def add(self, tp: TopicPartition, offset: int, parts: int, skipped: frozenset[str] = frozenset()) -> None:
        """``parts`` deliveries to wait for; ``skipped``: targets that finished ``offset`` before."""
        if parts > 0:
            self._open.setdefault(tp, {})[offset] = parts
        self._carried.get(tp, {}).pop(offset, None)
        if skipped:
            self._finished.setdefault(tp, {}).setdefault(offset, set()).update(skipped)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def skipped(self, tp: TopicPartition, offset: int, timestamp_ms: int = -1) -> frozenset[str]:
        """The targets that finished ``offset`` (a record of ``timestamp_ms``) before a restart or rebalance.

        A record newer than the progress means the offsets were reused (leads.hot recreated while the
        group's offsets survived, a log truncated by an unclean leader election): that progress is about
        records the log no longer holds, and is dropped for the partition. Before, every target it named
        was skipped for the new notifications at those offsets. A worker clock ahead of the notifier's
        only costs re-sends."""
        written_ms = self._carried_at.get(tp, -1)
        if 0 <= written_ms < timestamp_ms and self._carried.get(tp):
            del self._carried[tp]
            log.warning(
                "%s[%d]@%d is newer than the notifier progress read for it: offsets were reused, "
                "the progress is ignored and every target is sent what follows",
                tp.topic,
                tp.partition,
                offset,
            )
        return frozenset(self._carried.get(tp, {}).get(offset, ()))

    def carry(self, tp: TopicPartition, done: dict[str, set[int]], written_ms: int = -1) -> None:
        by_offset: dict[int, set[str]] = {}
        for target, offsets in done.items():
            for offset in offsets:
                by_offset.setdefault(offset, set()).add(target)
        self._carried[tp] = by_offset
        self._carried_at[tp] = written_ms

    def done(self, tp: TopicPartition, offset: int, epoch: int = 0, target: str | None = None) -> None:
        """``target`` (a ``notifier_progress.target_keys`` key, ``ALL``, or None: not recorded) finished
        ``offset``, added in ``epoch``.

        Why the epoch: a partition revoked and assigned back to this process is fetched again, and the copy
        of each target waits for its first copy; the first copies' completions counted against the re-added
        offset too, so one target's answer finished it twice and it was committed while another target's
        delivery was still in flight."""
        open_ = self._open.get(tp)
        if open_ is None or offset not in open_ or epoch != self._epoch.get(tp, 0):
            return  # partition revoked meanwhile: its new owner (maybe this process again) re-delivers
        if target is not None:
            self._finished.setdefault(tp, {}).setdefault(offset, set()).add(target)
        open_[offset] -= 1
        if open_[offset] <= 0:
            del open_[offset]

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit: everything below it is finished."""
        return {tp: min(self._open[tp]) if self._open.get(tp) else nxt for tp, nxt in self._next.items()}

    def progress(self, tp: TopicPartition, base: int) -> dict[str, set[int]]:
        """Per target, the offsets at or above ``base`` it finished (now or before a restart); the
        bookkeeping below ``base`` is dropped (everything there is finished by every target)."""
        out: dict[str, set[int]] = {}
        for table in (self._finished.get(tp, {}), self._carried.get(tp, {})):
            for offset in [o for o in table if o < base]:
                del table[offset]
            for offset, targets in table.items():
                for target in targets:
                    out.setdefault(target, set()).add(offset)
        return out

    def drop(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self._open.pop(tp, None)
            self._next.pop(tp, None)
            self._finished.pop(tp, None)
            self._carried.pop(tp, None)
            self._carried_at.pop(tp, None)
            self._epoch[tp] = self._epoch.get(tp, 0) + 1

    @property
    def in_flight(self) -> int:
        return sum(len(v) for v in self._open.values())


class GroupOffsets:
    """The group's committed offsets, as this process knows them, and the next ones to commit."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        inherit_from: str | None,
        bootstrap: str,
        topic: str,
        lag_gauge: LagGauge,
        pending: PendingOffsets,
        progress: ProgressLog | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.inherit_from = inherit_from
        self.bootstrap = bootstrap
        self.topic = topic
        self.lag_gauge = lag_gauge
        self.pending = pending
        self.progress = progress
        self.committed: dict[TopicPartition, int] = {}

    async def commit(
        self, consumer: AIOKafkaConsumer, *, final: bool = False, stopping: bool = False
    ) -> None:
        """Commit what moved, then write the targets' progress above it (``agents/notifier_progress.py``):
        at most every ``WRITE_INTERVAL_S`` per partition, and always when ``final`` (a stop, a revocation).

        Progress is written only after a commit that succeeded, so that a record's ``base`` is never above
        the group's offset (such a record is ignored), and so that a broker that does not answer costs the
        stop one commit timeout, not one more per record. Progress that changed while no offset moved
        re-commits the same offsets first, for that reason.

        ``stopping``: the stop's last commit, nothing is retried after it: given up after
        ``STOP_COMMIT_TIMEOUT_S``, with a warning naming what was given up (a restart re-sends, no loss)."""
        assigned = consumer.assignment()
        committable = self.pending.committable()
        offsets = {
            tp: off for tp, off in committable.items() if self.committed.get(tp) != off and tp in assigned
        }
        writes = self._progress_writes(assigned, {**self.committed, **offsets}, final)
        unwritten, reason = 0, ""
        if offsets or writes:
            try:
                await commit(
                    consumer,
                    offsets or {tp: base for tp, (base, _) in writes.items()},
                    STOP_COMMIT_TIMEOUT_S if stopping else None,
                )
                self.committed.update(offsets)
            except Exception as exc:  # a failed commit only means re-delivery after a restart
                reason = _reason(exc)
                if stopping and offsets:
                    log.warning(
                        "notifier stopping: commit of %d partition(s) given up at the stop (%s); what was "
                        "delivered since the last commit is sent again after a restart",
                        len(offsets),
                        reason,
                    )
                elif not stopping:
                    log.warning("notifier commit failed (will retry): %s", reason)
                unwritten, writes = len(writes), {}
        for done_writes, (tp, (base, done)) in enumerate(sorted(writes.items())):
            assert self.progress is not None  # there are writes only with one
            try:
                await self.progress.save(tp, base, done)
            except Exception as exc:  # the last record written still holds: a restart re-sends more
                reason = _reason(exc)
                if not stopping:
                    log.warning("notifier progress not written (will retry): %s", reason)
                unwritten = len(writes) - done_writes
                break
        if stopping and unwritten:
            log.warning(
                "notifier stopping: progress of %d partition(s) not written, given up at the stop (%s); a "
                "restart may send targets again what they had finished (receivers drop it by idempotency "
                "key, a Slack target shows it twice)",
                unwritten,
                reason,
            )
        self.report_lag(consumer)  # also when nothing moved: a stuck receiver is exactly that case

    def _progress_writes(
        self, assigned: Any, bases: dict[TopicPartition, int], final: bool
    ) -> dict[TopicPartition, tuple[int, dict[str, set[int]]]]:
        """Per assigned partition with a committed offset, its progress when the last record lacks some."""
        if self.progress is None:
            return {}
        writes = {}
        for tp in assigned:
            if (base := bases.get(tp)) is not None:
                done = self.pending.progress(tp, base)
                if self.progress.changed(tp, base, done, final):
                    writes[tp] = (base, done)
        return writes

    async def load_commits(self, consumer: AIOKafkaConsumer, assigned: Sequence[TopicPartition]) -> None:
        """The group's committed offset of each newly assigned partition, so that the lag counts from it
        (it counted from 0: after a restart with nothing new, the lag was the whole log). A partition the
        group has never committed starts where ``inherit_from`` left it, when that group committed it."""
        found = await group_commits(consumer, assigned)
        if found is None:
            return  # the coordinator did not answer: aiokafka's own position fetch decides, as before
        for tp, offset in found.items():
            self.committed.setdefault(tp, offset)
        missing = [tp for tp in assigned if tp not in found]
        if missing and self.inherit_from is not None:
            await self.inherit(consumer, missing, self.inherit_from)
        if self.progress is not None:  # read for every partition: the first write supersedes a stale record
            records = await self.progress.load(assigned)
            for tp, record in records.items():
                self.pending.carry(tp, applicable(record, found.get(tp)), self.progress.read_ms.get(tp, -1))

    async def inherit(self, consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], group: str) -> None:
        """Start ``tps`` at ``group``'s committed offsets and commit them as this group's own.

        Why: earlier releases used the unprefixed group id. A new group has no offsets, so without this the
        first prefixed notifier would re-deliver every hot lead still in retention (``earliest``), and
        ``latest`` would skip those published while it was down. The old group's offsets are per topic, so
        deployments that shared it each take only their own. Best effort: if they cannot be read, the
        notifier starts from the earliest offset and receivers drop what they had by the idempotency key."""
        old = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            **aiokafka_client_config(self.settings),
        )
        try:
            await start_client(old)
            inherited = await group_commits(old, tps) or {}
        except Exception as exc:  # the start position falls back to earliest
            log.warning("could not read consumer group %s's offsets to take over: %s", group, exc)
            inherited = {}
        finally:
            await stop_consumer(old)
        if not inherited:
            return
        for tp, offset in inherited.items():
            consumer.seek(tp, offset)
            self.committed[tp] = offset
        try:
            await commit(consumer, inherited)
        except Exception as exc:  # the seek stands; the next delivery commits past it
            log.warning("could not commit the offsets taken over from %s: %s", group, exc)
        log.info(
            "consumer group %s took over %d partition offset(s) of %s on %s",
            self.group_id,
            len(inherited),
            group,
            self.topic,
        )

    def report_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Notifications not yet delivered (or given up) per partition: a stuck receiver shows as lag."""
        done = self.committed
        self.lag_gauge.report(consumer_lags(consumer, lambda tp: done.get(tp, 0), lambda _: HOT_LEADS.name))


def _reason(exc: BaseException) -> str:
    """``Type: message`` (a timeout has no message; a KafkaError's message already starts with its type)."""
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


class NotifierRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, notifier: Notifier, consumer: AIOKafkaConsumer) -> None:
        self.notifier = notifier
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.notifier.revocations += 1
        await self.notifier.offsets.commit(self.consumer, final=True)
        self.notifier.pending.drop(list(revoked))
        if self.notifier.offsets.progress is not None:
            self.notifier.offsets.progress.forget(revoked)
        for tp in revoked:
            self.notifier.offsets.committed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        tps = list(assigned)
        # Paused before the first await: aiokafka resets positions and fetches as soon as the assignment is
        # set, so while the start positions were being settled (the take-over reads another group's
        # offsets) getmany handed out records from the earliest offset, delivered again (a CI run found it).
        self.consumer.pause(*tps)
        try:
            await self.notifier.offsets.load_commits(self.consumer, tps)
        finally:
            self.consumer.resume(*tps)
        self.notifier.assigned = True
