"""Cross-topic alignment: records of co-partitioned input topics are released in timestamp order, across
fetches, so a backlog is processed in the order it was produced.

Why: one lead's events arrive on several topics (a download on ``events.downloads``, the rep's ``accepted``
on ``sales.activities``) that share a partition number. A fetch holds what the broker returned per
topic-partition, and while catching up on a backlog one topic's partition may come back thousands of
records ahead of another's. Sorting a batch by event time cannot repair that: the earlier records are not
in the batch yet. Processed as fetched, the ``accepted`` moved the lead to ``sal`` before the demo request
that made it an MQL was read, so the MQL transition and its hot lead were never emitted (an audit lost 58%
of the planned hot leads on a 3,000-lead backlog; 0% live).

The rule is Kafka Streams' timestamp synchronisation: within one partition number, a record is released
only when every other input topic-partition of that number either holds a record at least as new (so
nothing older can still come from it) or has nothing left to read (its fetch position reached its high
watermark). A partition that is behind but returns nothing is waited for at most ``max_wait_s``; after
that its group proceeds with what it has (a slow or stuck fetch must not stall the pipeline).

Timestamps are the Kafka record timestamps (the producer's clock), the order in which records were
produced, which is what the trackers and the CRM did in real life; within a released batch the worker still
sorts by event time. Internal hops (identity, accounts) are never held: the worker produces them itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from aiokafka import ConsumerRecord, TopicPartition

Fetched = dict[TopicPartition, list[ConsumerRecord]]


class TopicAligner:
    def __init__(self, aligned_topics: Iterable[str], max_wait_s: float) -> None:
        self.aligned_topics = frozenset(aligned_topics)
        self.max_wait_s = max_wait_s
        self.held: Fetched = {}
        self.waiting_since: dict[int, float] = {}  # partition number -> when its group started waiting

    def add(self, fetched: Fetched) -> Fetched:
        """Hold the aligned topics' records; return the others (to process now)."""
        now: Fetched = {}
        for tp, records in fetched.items():
            if not records:
                continue
            if tp.topic in self.aligned_topics:
                held = self.held.get(tp)
                if held is None:
                    self.held[tp] = list(records)
                else:
                    held.extend(records)
            else:
                now[tp] = records
        return now

    def release(
        self, owned: Iterable[TopicPartition], caught_up: Callable[[TopicPartition], bool], now_s: float
    ) -> tuple[Fetched, set[TopicPartition]]:
        """(records to process now, held partitions whose group waits for a partition that is behind).

        ``caught_up(tp)``: the partition has nothing left to read (position at its high watermark)."""
        groups: dict[int, list[TopicPartition]] = {}
        for tp in owned:
            if tp.topic in self.aligned_topics:
                groups.setdefault(tp.partition, []).append(tp)
        released: Fetched = {}
        blocked: set[TopicPartition] = set()
        for number, tps in groups.items():
            holding = [tp for tp in tps if self.held.get(tp)]
            if not holding:
                self.waiting_since.pop(number, None)
                continue
            horizon = math.inf
            behind = False
            for tp in tps:
                records = self.held.get(tp)
                if caught_up(tp):
                    continue  # nothing older can come from it
                if records:
                    horizon = min(horizon, _timestamp(records[-1]))
                else:
                    behind = True  # it has records we have not seen: they may be older
            if behind:
                since = self.waiting_since.setdefault(number, now_s)
                if now_s - since < self.max_wait_s:
                    blocked.update(holding)
                    continue
            self.waiting_since.pop(number, None)
            for tp in holding:
                records = self.held[tp]
                cut = _prefix_through(records, horizon)
                if cut:
                    released[tp] = records[:cut]
                    if cut == len(records):
                        del self.held[tp]
                    else:
                        self.held[tp] = records[cut:]
        return released, blocked

    def drop(self, revoked: Iterable[TopicPartition] | None = None) -> None:
        """Forget held records (all, or of ``revoked``): they are not committed, so they are read again."""
        if revoked is None:
            self.held.clear()
            self.waiting_since.clear()
            return
        for tp in revoked:
            self.held.pop(tp, None)

    def __len__(self) -> int:
        return sum(len(records) for records in self.held.values())


def _timestamp(record: ConsumerRecord) -> int:
    return int(record.timestamp or 0)


def _prefix_through(records: list[ConsumerRecord], horizon: float) -> int:
    """How many leading records are at or before ``horizon`` (a prefix: offsets are committed in order).
    Timestamps of one partition usually only grow, but two producers' clocks can interleave."""
    if horizon == math.inf:
        return len(records)
    for index, record in enumerate(records):
        if _timestamp(record) > horizon:
            return index
    return len(records)
