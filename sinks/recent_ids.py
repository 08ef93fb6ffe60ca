"""The ids the sink stored lately, per topic-partition: a re-sent record is dropped before the insert.

Why here and not in ClickHouse: ``events`` (and the other id-keyed tables) are ReplacingMergeTree, so
``FINAL`` already shows a re-sent record once, but the daily materialized views add up every inserted row
and a plain ``count()`` sees both rows until a merge. A view cannot skip ids already stored (it sees its
own block in the source table, docs/clickhouse.md), and looking the ids up in ``events`` costs a scan of
its id column per batch. Re-sends that matter in practice arrive soon after the original on the *same*
partition (same key): a client retrying a request whose answer it lost, a producer retry, a worker
re-emitting outputs after a crash. A bounded memory of the newest ids per partition catches those.

What it does not catch (documented): a re-send older than the last ``capacity`` records of its
partition, one on another partition (another key), and one that straddles a sink restart or a rebalance
(the memory of a partition is dropped when the partition is revoked, so a re-read after a rebalance is
never mistaken for a duplicate). Those are still stored twice and collapse under ``FINAL``.
"""

from __future__ import annotations

from collections import OrderedDict

TopicPartition = tuple[str, int]


class RecentIds:
    """Per topic-partition, the newest ``capacity`` ids taken for storage and the offset each was first
    taken at, oldest evicted first. The offset tells the sink whether the first copy is stored already
    (below the partition's unwritten batch) or still waiting in a batch, where it may yet be refused.

    A copy taken while an earlier one still waits is stored too (``also_taken``), and its offset is kept
    beside the first: when ClickHouse refuses the first copy (a corrected re-send right behind a rejected
    one), the id stays remembered at the next copy taken, so a third copy is a re-send, not stored again."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # OrderedDict, not dict: evicting a plain dict's first key gets slower with every deletion (its
        # iterator walks the deleted slots; measured 11 µs a call at 10,000 ids), popitem(last=False) is O(1).
        self._ids: dict[TopicPartition, OrderedDict[str, int]] = {}
        # The later copies taken while an earlier one waited, per id still in ``_ids``: rare, so kept apart
        # from the per-record path (which only checks that this is empty when it evicts an id).
        self._later: dict[TopicPartition, dict[str, list[int]]] = {}

    def first_offset(self, tp: TopicPartition, record_id: str) -> int | None:
        """Where ``record_id`` was first taken on ``tp``, if lately."""
        ids = self._ids.get(tp)
        return ids.get(record_id) if ids is not None else None

    def first_or_take(self, tp: TopicPartition, record_id: str, offset: int) -> int | None:
        """Where ``record_id`` was first taken on ``tp`` lately; if nowhere, remember it as taken at
        ``offset`` and return None (a later copy keeps the first one's offset). One lookup: the sink's
        per-record path."""
        ids = self._ids.get(tp)
        if ids is None:
            if self.capacity <= 0:
                return None
            ids = self._ids[tp] = OrderedDict()
        first = ids.get(record_id)
        if first is not None:
            return first
        if self.capacity > 0:
            ids[record_id] = offset
            if len(ids) > self.capacity:
                evicted, _ = ids.popitem(last=False)
                if self._later:
                    self._drop_later(tp, evicted)
        return None

    def also_taken(self, tp: TopicPartition, record_id: str, offset: int) -> None:
        """Another copy of ``record_id`` was taken for storage at ``offset`` while the first one waited
        unwritten: should ClickHouse refuse the first, this one is where the id was stored."""
        ids = self._ids.get(tp)
        if ids is not None and ids.get(record_id) not in (None, offset):
            self._later.setdefault(tp, {}).setdefault(record_id, []).append(offset)

    def forget(self, tp: TopicPartition, record_id: str, offset: int) -> None:
        """The copy taken at ``offset`` was not stored (ClickHouse refused the row): the id stays remembered
        at the next copy taken after it, if any; otherwise a later copy is new."""
        ids = self._ids.get(tp)
        if ids is None:
            return
        later = self._later.get(tp, {}).get(record_id)
        if ids.get(record_id) == offset:
            if later:
                # The lowest: a copy known stored (``STORED``, -1, a skipped stored record) before any that
                # still waits, and of those the one written first.
                lowest = min(later)
                later.remove(lowest)
                ids[record_id] = lowest
            else:
                del ids[record_id]
        elif later and offset in later:
            later.remove(offset)
        if later is not None and not later:
            self._drop_later(tp, record_id)

    def _drop_later(self, tp: TopicPartition, record_id: str) -> None:
        later = self._later.get(tp)
        if later is not None:
            later.pop(record_id, None)
            if not later:
                del self._later[tp]

    def drop_partition(self, tp: TopicPartition) -> None:
        """The partition was revoked: its uncommitted records will be read again, by us or another sink."""
        self._ids.pop(tp, None)
        self._later.pop(tp, None)

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())
