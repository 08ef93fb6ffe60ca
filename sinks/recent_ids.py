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
    """Per topic-partition, the newest ``capacity`` ids taken for storage, oldest evicted first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # OrderedDict, not dict: evicting a plain dict's first key gets slower with every deletion (its
        # iterator walks the deleted slots; measured 11 µs a call at 10,000 ids), popitem(last=False) is O(1).
        self._ids: dict[TopicPartition, OrderedDict[str, None]] = {}

    def repeat(self, tp: TopicPartition, record_id: str) -> bool:
        """Whether ``record_id`` was taken on ``tp`` lately; if not, remember it (oldest first)."""
        if self.capacity <= 0:
            return False
        ids = self._ids.get(tp)
        if ids is None:
            ids = self._ids[tp] = OrderedDict()
        elif record_id in ids:
            return True
        ids[record_id] = None
        if len(ids) > self.capacity:
            ids.popitem(last=False)
        return False

    def forget(self, tp: TopicPartition, record_id: str) -> None:
        """``record_id`` was not stored after all (ClickHouse refused the row): a corrected re-send is new."""
        ids = self._ids.get(tp)
        if ids is not None:
            ids.pop(record_id, None)

    def drop_partition(self, tp: TopicPartition) -> None:
        """The partition was revoked: its uncommitted records will be read again, by us or another sink."""
        self._ids.pop(tp, None)

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())
