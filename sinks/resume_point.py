"""Which fetched offsets of a partition a resuming sink skips as already stored in ClickHouse.

Why not "everything up to the highest stored offset": what is stored for a partition is not always a prefix
of its log. A dead letter still unacknowledged when the sink died holds the commit below its record while
later records of the partition are already inserted; rows ClickHouse refused in a bisection are not
stored, and a rebalance may drop their batch before they are dead-lettered. Skipping through the highest
stored offset lost such records without a word. So the offsets missing among the stored ones between the
group's committed offset and the highest stored offset (the gaps, listed by ``sinks.stored_positions``) are
taken again: stored, or dead-lettered a second time (a letter may be written twice, never dropped).

Pure: no I/O, so the rule is tested on its own (tests/unit/test_resume_point.py).
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: At most this many gaps are listed per partition; a partition with more is resumed at its first unlisted
#: gap (``resume_point``): its stored records from there on are stored again, not lost.
MAX_GAPS = 20_000


@dataclass(frozen=True)
class ResumePoint:
    """Offsets up to ``skip_through`` are stored, but those in ``gaps``: sorted, disjoint inclusive ranges
    (first, last), all at or below ``skip_through``."""

    skip_through: int
    gaps: tuple[tuple[int, int], ...] = ()
    _firsts: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_firsts", [first for first, _ in self.gaps])

    def in_gap(self, offset: int) -> bool:
        """Whether ``offset`` lies in a gap: not stored, to be taken again. A bisection, so the intake asks
        only for offsets at or below ``skip_through`` and only when there are gaps."""
        index = bisect_right(self._firsts, offset) - 1
        return index >= 0 and offset <= self.gaps[index][1]

    def stored(self, offset: int) -> bool:
        """Whether the record at ``offset`` is already stored, so skipped."""
        return offset <= self.skip_through and not self.in_gap(offset)


def resume_point(
    max_stored: int, gaps: Sequence[tuple[int, int]], limit: int = MAX_GAPS, *, where: str = ""
) -> ResumePoint:
    """The resume point of a partition whose highest stored offset is ``max_stored`` and whose gaps were
    listed in offset order, at most ``limit + 1`` of them. More than ``limit`` means the listing was cut:
    skipping then ends just before the first gap not kept, so the records from there on are taken again
    (stored ones a second time, which ``FINAL`` collapses) rather than skipped past an unlisted gap."""
    ranges = tuple(sorted(gaps))
    if len(ranges) <= limit:
        return ResumePoint(max_stored, ranges)
    skip_through = ranges[limit][0] - 1
    log.warning(
        "%s: more than %d gaps among the offsets stored in ClickHouse; records after offset %d are stored "
        "again (duplicates collapse under FINAL), not skipped",
        where or "a partition",
        limit,
        skip_through,
    )
    return ResumePoint(skip_through, ranges[:limit])
