"""Rows ClickHouse rejected as invalid in an insert of the sink loop: dead-lettered, and their ids taken out
of the recent ids. Split out of ``sinks.sink_loop`` (one job a module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.registry import HEADER_LEN
from sinks.batch import Rejected, SinkBatch
from sinks.erase import event_head
from sinks.rows import EVENTS

if TYPE_CHECKING:
    from sinks.sink_loop import ClickHouseSinkLoop


def dead_letter_rejected(loop: ClickHouseSinkLoop, batch: SinkBatch, rejected: list[Rejected]) -> None:
    """Dead-letter each of ``rejected`` (rows of ``batch``), after forgetting its id among the recent ones."""
    for bad in rejected:
        # Not stored, so a corrected re-send of it is not a duplicate.
        if batch.table.keyed_by_id and bad.value is not None:
            record_id = (
                event_head(bad.value[HEADER_LEN:])[0]  # may not decode: read like the fast path
                if batch.table is EVENTS
                else loop.positions.first_column((bad.topic, bad.partition), bad.offset, bad.value)
            )
            if record_id is not None:
                loop.intake.recent.forget((bad.topic, bad.partition), record_id, bad.offset)
        loop._dead_letter(
            bad.topic,
            bad.partition,
            bad.offset,
            bad.key,
            bad.value,
            "sink",
            bad.error_type,
            bad.reason,
        )
