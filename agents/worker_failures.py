"""A worker batch the core raised for, or whose records could not be written: dropped unwritten, the owned
partitions reloaded from what is durable, and the input records at fault dead-lettered when the batch comes
again (``LeadWorker.failed_in_core``, checked per record in ``agents/worker_records.py``).

Why its own module: these run once per failed batch, never per event; the per-batch path only hands them
what failed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agents.lead_store import ACCOUNT_PREFIX
from agents.worker_batch import NotWritable, RecordTooLarge

if TYPE_CHECKING:
    from agents.worker import LeadWorker
    from agents.worker_records import Decoded

log = logging.getLogger("agents.worker")  # the name it logged under before the split: log lines unchanged


def core_raised(worker: LeadWorker, failed: dict[tuple[str, int, int], Exception]) -> None:
    """The core raised for these records (topic, partition, offset): the batch is dropped unwritten, the
    owned partitions are reloaded from what is durable at once, and when the batch comes again these
    records are dead-lettered (stage ``process``) instead of being handled.

    Why not dead-letter them and go on, as before: ``step`` updates a lead's state in place (a copy per
    event would cost more than the scoring), so one that raised half-way left a half-updated state in
    memory, which the batch (or the lead's next one) wrote to the changelog. Reloading restores every
    state the batch touched; other records of a failed lead are not handled on the dropped pass (a
    failure there could be the first one's doing) and are processed normally on the next."""
    worker.failed_in_core.update(failed)
    worker.reload_pending = True
    worker.retry_at = 0.0  # not the broker's doing: no back-off
    log.warning(
        "%d record(s) not handled (logged above): the batch is dropped, the owned partitions are "
        "reloaded from the changelog and the committed offsets, and those records are dead-lettered",
        len(failed),
    )


def too_large(worker: LeadWorker, exc: RecordTooLarge, decoded: list[Decoded]) -> None:
    """Records of the batch too large to write (nothing was sent): the batch's input records of their keys
    (the leads or accounts whose state or output grew too large) are dead-lettered when the batch comes
    again, as for a record the core raised for, and the rest of the batch is processed as usual. The
    lead keeps its last state that could be written; its next records grow it past the limit again and
    are dead-lettered in turn, each with the size in its reason."""
    by_key: dict[bytes | None, list[tuple[str, bytes | None, int]]] = {}
    for record in exc.records:
        by_key.setdefault(record[1], []).append(record)
    failures: dict[bytes | None, Exception] = {key: RecordTooLarge(found) for key, found in by_key.items()}
    _fail_keys(worker, failures, exc, decoded)


def not_written(worker: LeadWorker, exc: NotWritable, decoded: list[Decoded]) -> None:
    """Records of the batch that could not be built (``next_deadline``, a state's or an account's
    encoding raised: a core bug; nothing was sent): handled like records too large to write, the batch's
    input records of those keys are dead-lettered (stage ``process``, the exception in the error) when
    the batch comes again, and the rest of the batch is processed. An account's input records are its
    hops on the accounts topic (keyed by domain), as for an account too large to write."""
    for key, (topic, failure) in exc.failures.items():
        log.error(
            "%s record of key %r could not be built",
            topic,
            key.decode(errors="replace"),
            exc_info=(type(failure), failure, failure.__traceback__),
        )
    failures: dict[bytes | None, Exception] = {
        key: NotWritable({key: failure}) for key, failure in exc.failures.items()
    }
    _fail_keys(worker, failures, exc, decoded)


def _fail_keys(
    worker: LeadWorker, by_key: dict[bytes | None, Exception], exc: Exception, decoded: list[Decoded]
) -> None:
    """Dead-letter the batch's input records of these keys (a lead's, or ``ACCOUNT_PREFIX`` + the domain
    of an account's hops) when it comes again, with their error; reload now (``core_raised``)."""
    failed: dict[tuple[str, int, int], Exception] = {}
    for message, _schema, _record in decoded:
        key = message.key
        found = by_key.get(key) or (
            by_key.get(ACCOUNT_PREFIX + key) if key and message.topic == worker.accounts_topic else None
        )
        if found is not None:
            failed[(message.topic, message.partition, message.offset)] = found
    log.error("not written, %s; %d input record(s) of these keys will be dead-lettered", exc, len(failed))
    if not failed:  # (every record comes from an input record of its key: not expected)
        worker.start_over(exc)
        return
    core_raised(worker, failed)
