"""Erasures in the sink loop: records of leads erased with ``leadpulse forget`` (the erasure log,
``streams.erasures``) are dropped before insert (``RecordIntake``), so a replay cannot bring them back; with
embedded ClickHouse the sink owns the engine and also deletes the lead's stored rows when an erasure arrives
(``sinks.erase``). With a server, `leadpulse forget` deletes on the server itself, and the sink only sweeps
what it stored of the lead around that moment (``SinkErasures._sweep_erasure``).

Split out of ``sinks.sink_loop`` (one job a module); the loop owns one ``SinkErasures`` and calls ``apply``
after each flush and ``at_shutdown`` from its drain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from sinks.erase import already_applied, apply_erasure, erasures_with_rows, recorded_erasure, remaining_rows
from sinks.errors import SinkBackpressure
from sinks.query_service import client_runner

if TYPE_CHECKING:
    from sinks.sink_loop import ClickHouseSinkLoop

log = logging.getLogger("sinks.sink_loop")  # the name it logged under before the split: log lines unchanged

#: Seconds a sink with a ClickHouse server waits for ``forget``'s own deletion of a lead before it sweeps the
#: lead's rows anyway (``SinkErasures._sweep_erasure``).
SWEEP_WAIT_S = 300.0


class SinkErasures:
    """The loop's erasures: read at start, tailed while running (``loop.erasures``); applied to ClickHouse
    here when this process owns the embedded engine (``loop.apply_erasures``), else swept."""

    def __init__(self, loop: ClickHouseSinkLoop) -> None:
        self.loop = loop
        self.pending: list[dict[str, Any]] = []
        self.flush_due = False  # erasures arrived: store what was taken before, once
        self.sweep_waits: dict[tuple[str, int], float] = {}  # server: sweeps waiting for forget's deletion
        self.read_at_start: list[dict[str, Any]] = []  # server: looked at once for rows (``_left_at_start``)

    async def apply(self) -> None:
        """Delete newly erased leads from the embedded engine this process owns, or, with a server, sweep
        what this sink stored of them (``_sweep_erasure``). Rows of the lead taken before the erasure
        arrived are flushed first, so the deletion removes them too."""
        if self.loop.erasures is None:
            return
        new = self.loop.erasures.drain_new()  # (server: those read at start are not: loop.run_async)
        if new:
            self.pending.extend(new)
            self.flush_due = True
        if self.read_at_start and not self.loop._listener.revoked:
            await self._left_at_start()
        if not self.pending or self.loop._listener.revoked:
            return  # (a revocation first: the batches it drops are re-read, without the erased records)
        if self.flush_due:  # once per arrival: what is taken later holds none of the lead's rows
            await self.loop._flush(force=True)
            self.flush_due = False
        elif self.loop.writing is not None:
            # One statement at a time on the client: a server refuses a second one within its session, and a
            # sweep waiting for forget's deletion asks at every step, right after a step started an insert.
            await self.loop._finish_write()
        waiting: list[dict[str, Any]] = []
        try:
            while self.pending:
                record = self.pending[0]
                try:
                    done = await asyncio.to_thread(self._apply_erasure, record)
                except Exception as exc:  # ClickHouse busy/away: keep it pending, back off like an insert
                    raise SinkBackpressure("erasures", 5.0, exc) from exc
                self.pending.pop(0)
                if not done:
                    waiting.append(record)
        finally:
            self.pending[:0] = waiting

    async def _left_at_start(self) -> None:
        """With a server: queue for a sweep the erasures read at start whose rows are still stored.

        Why: a sink that stored rows of a lead and then stopped or crashed before its tail saw the lead's
        erasure (or before its sweep ran) left them after ``forget``'s delete, for good: this process reads
        that erasure at its start, takes none of the lead's records, and so never swept it. One query over
        the base tables for every erasure read (``erasures_with_rows``); only those with rows are swept,
        by the tail's rules (``_sweep_erasure``: after forget's own deletion is recorded)."""
        if self.loop.writing is not None:  # one statement at a time on the client
            await self.loop._finish_write()
        try:
            left = await asyncio.to_thread(erasures_with_rows, self.loop.client, self.read_at_start)
        except Exception as exc:  # ClickHouse busy/away: checked again after the back-off
            raise SinkBackpressure("erasures", 5.0, exc) from exc
        self.read_at_start = []
        if left:
            log.warning(
                "erasure log: rows of %d lead(s) erased before this start are still stored; sweeping them",
                len(left),
            )
            self.pending[:0] = left

    def _apply_erasure(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` is done with (False: a sweep waits for ``forget``'s own deletion)."""
        if not self.loop.apply_erasures:
            return self._sweep_erasure(record)
        if already_applied(self.loop.client, record):
            return True
        result = apply_erasure(self.loop.client, record, applied_by="sink")
        log.info("erasure %s applied: %d row(s) deleted", result.erasure_id, result.total)
        return True

    def _sweep_erasure(self, record: dict[str, Any]) -> bool:
        """With a ClickHouse server, after the rows taken before the erasure arrived are stored: delete
        whatever of the lead is stored now, recorded as applied by the sink, if anything is.

        Why: ``forget`` logs the erasure, then deletes on the server. Rows of the lead this sink had taken
        (batched, or in an insert in flight) before its tail saw the erasure were inserted after that delete
        and stayed, with the erasure recorded as done. From the moment the tail has the erasure, the lead's
        records are dropped before they are taken; so once the earlier ones are stored (the flush before
        this), one more delete leaves nothing. Erasures read at start are swept only if rows of theirs are
        still stored (``_left_at_start``): nothing of theirs was taken by this process, an earlier sink's.

        Not alongside ``forget``'s own deletion: both would rebuild the daily-view keys the lead fed
        (delete them, insert them again from the other leads' rows), and with both deletes before either
        insert the other leads' counts were inserted twice. So the sweep waits (False) until that deletion is
        recorded in ``leadpulse.erasures``, at most ``SWEEP_WAIT_S`` (a ``forget`` whose deletion failed
        records nothing: the sweep then does its work)."""
        run = client_runner(self.loop.client)
        key = (str(record["erasure_id"]), int(record["requested_at"]))
        since = self.sweep_waits.setdefault(key, time.monotonic())
        if recorded_erasure(run, record) is None and time.monotonic() - since < SWEEP_WAIT_S:
            return False
        self.sweep_waits.pop(key, None)
        left = remaining_rows(run, record)
        if not any(left.values()):
            return True
        result = apply_erasure(self.loop.client, record, applied_by="sink")
        log.warning(
            "erasure %s: %d row(s) of the lead stored after forget's delete, deleted now",
            result.erasure_id,
            result.total,
        )
        return True

    async def at_shutdown(self) -> None:
        """With a ClickHouse server, after the drain's last store: erasures the tail has and no step swept
        yet are swept now, since that store may hold rows of their leads taken before they arrived
        (``_sweep_erasure``). What is left then (an erasure the tail had not seen, a sweep still waiting for
        forget's deletion) the next sink finds at its start (``_left_at_start``)."""
        problem = "their deletion by `leadpulse forget` was not recorded yet"
        self.read_at_start = []  # not looked at now: the next start does
        try:
            await self.apply()
        except SinkBackpressure as exc:
            problem = str(exc)
        if self.pending:
            log.warning(
                "shutdown: rows of erased lead(s) %s this sink stored may be left (%s); the next sink "
                "start sweeps them",
                ", ".join(str(r["lead_id"]) for r in self.pending),
                problem,
            )
