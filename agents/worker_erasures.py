"""Erasure in the worker: an erased lead's states dropped and tombstoned durably, its score taken out of its
account, and after a restore whatever of it the changelog still held purged.

The per-event check (drop an erased lead's inputs) stays on the worker's hot path
(``worker_records._erased``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from agents.account import AccountState, without_lead
from agents.kafka_batches import Record
from agents.lead_store import ACCOUNT_PREFIX
from agents.worker_batch import DLQ_HEADERS, Batch, NotWritable, flush, send
from streams.dlq import dead_letter, encode_dead_letter
from streams.erasures import erasure_id
from streams.topics import ERASURES

if TYPE_CHECKING:
    from agents.worker import LeadWorker

log = logging.getLogger("agents.worker")


class ErasureSource(Protocol):
    """What the worker needs from ``streams.erasures.ErasureLog``."""

    def is_erased(self, identity: str | None) -> bool: ...
    def drain_new(self) -> list[dict[str, Any]]: ...


async def apply_erasures(worker: LeadWorker, records: list[dict[str, Any]]) -> None:
    """Drop an erased lead's states (lead and stitched anonymous ids) and tombstone them durably; take
    the lead out of its account's score.

    The worker also tombstones each identity's key on the compacted ``leads.scores``: it is that key's
    only writer and drops the lead's inputs from now on, so no later score can land after the tombstone,
    and compaction then removes the lead's scores from the topic (docs/privacy.md)."""
    if not records:
        return
    batch = Batch()
    letters: set[tuple[str, str]] = set()  # the parts dead-lettered by this pass (_dead_letter)
    tombstones: list[Record] = []
    erased_from: dict[bytes, list[str]] = {}  # account key -> the leads this batch takes out of it
    accounts = _decodable_accounts(worker)
    for record in records:
        lead_id = record["lead_id"]
        try:
            lead = worker.store.get(lead_id.encode())
        except Exception as exc:  # its stored state does not decode: see _unread
            _unread(worker, batch, letters, lead_id, exc)
            lead = None
        aliases = lead.aliases if lead is not None else []
        for identity in {lead_id, *record.get("anonymous_ids", []), *aliases}:
            key = identity.encode()
            partition = worker.store.partition_of(key)
            if partition is not None:
                worker.store.delete(key)
                tombstones.append((worker.state_topic, key, None, None, partition))
                tombstones.append((worker.output_topics["lead_score"], key, None, None, None))
        for key, partition, account in (found for found in accounts if lead_id in found[2].leads):
            # from what this batch already took out of it: two erased leads of one account (a purge after a
            # restore), each taken out of the stored account, wrote it with the first one still counted
            taken = batch.accounts.get(key)
            batch.accounts[key] = (partition, without_lead(taken[1] if taken else account, lead_id))
            erased_from.setdefault(key, []).append(lead_id)
    try:
        await flush(worker, batch)
    except NotWritable as exc:
        await flush(worker, _without_unwritable(worker, batch, letters, exc, erased_from))
    written(worker, letters)
    await send(worker, tombstones)


def _without_unwritable(
    worker: LeadWorker,
    batch: Batch,
    letters: set[tuple[str, str]],
    exc: NotWritable,
    erased_from: dict[bytes, list[str]],
) -> Batch:
    """The erasure batch again without the accounts that could not be built (a core bug: their state or
    ``account_score`` encoding raised; nothing was sent), and a dead letter per lead and such account.

    Why dead-letter and not start over: the failure is not the broker's, so it came back at each try, and
    the reload's purge of erased leads (``purge_erased``) raised it out of the poll loop: the worker exited,
    and after a restart it did again, processing nothing for any lead. Why that is safe for an erasure:
    nothing of it is dropped. The lead's states and scores are tombstoned as usual and its inputs are
    dropped (the erasure log says it is erased); only the account keeps counting it, as durably as before,
    and each restore (start, rebalance, reload) applies the erasure to it again (``purge_erased``), so a
    fixed version completes it (the letter is written once per process: ``_dead_letter``). The letter
    (source the erasure log, offset -1, stage ``process``, error type ``NotWritable``) carries the lead id as
    its key and no value on purpose: ``dlq replay`` skips it, since a re-built erasure record (a purge knows
    only the lead id) re-published on the log, compacted by lead id, would replace the original and un-erase
    its anonymous ids."""
    unwritable = set(exc.failures)
    if not unwritable <= batch.accounts.keys():
        raise exc  # (an erasure writes no lead state: not expected)
    retry = Batch(
        accounts={k: v for k, v in batch.accounts.items() if k not in unwritable},
        sends=[record for record in batch.sends if record[0] == worker.dlq_topic],  # the letters of _unread
        dead_letters=list(batch.dead_letters),
    )
    for key in sorted(unwritable):
        topic, failure = exc.failures[key]
        domain = key.removeprefix(ACCOUNT_PREFIX).decode(errors="replace")
        for lead_id in erased_from.get(key, []):
            error = (
                f"the erasure of lead {lead_id!r} is not complete: its account {domain!r} could not be built "
                f"for {topic} ({type(failure).__name__}: {failure}); the lead's states and scores are "
                "tombstoned and its inputs dropped, the account still counts it until a restore applies the "
                "erasure again with a fixed version"
            )
            _dead_letter(worker, retry, letters, (lead_id, domain), error, "NotWritable", failure)
    return retry


def _unread(
    worker: LeadWorker, batch: Batch, letters: set[tuple[str, str]], lead_id: str, exc: Exception
) -> None:
    """An erased lead whose stored state does not decode (a core bug, or a state written by another
    version): its key is tombstoned as usual, with the erasure's own anonymous ids, and a dead letter says
    that the anonymous ids stitched to it (held in that state) could not be read.

    Why: the state was decoded for those ids outside any guard, so the exception escaped the poll loop and
    the worker exited; the purge of erased leads after each restore raised it again, so the worker exited at
    every start (tests/integration/test_worker_erasure_undecodable_lead.py). Safe: the lead's inputs are
    dropped (the erasure log), its state and scores tombstoned; a stitched anonymous id's state, if any, is
    left for an erasure naming it (``leadpulse forget`` with the ids), which the letter calls for."""
    error = (
        f"the erasure of lead {lead_id!r} may not be complete: its stored state does not decode "
        f"({type(exc).__name__}: {exc}), so the anonymous ids stitched to it are not known and their states, "
        "if any, are not erased; the lead's own state and scores are tombstoned and its inputs dropped"
    )
    _dead_letter(worker, batch, letters, (lead_id, ""), error, type(exc).__name__, exc)


def _dead_letter(
    worker: LeadWorker,
    batch: Batch,
    letters: set[tuple[str, str]],
    part: tuple[str, str],
    error: str,
    error_type: str,
    exc: BaseException,
) -> None:
    """A dead letter for the part of an erasure not done, ``part`` = (lead id, the account's domain or ""
    for the lead's own state): source the erasure log, partition and offset -1, stage ``process``, the lead
    id as key, the erasure's id as event id and no value (see ``_without_unwritable``), logged.

    Once per part and process: each restore (start, rebalance, reload: ``purge_erased``) and the erasure
    log's first drain apply the erasure again and fail the same way, and each wrote another letter (a start
    wrote two). Why not once for good: the worker would have to read back, at each start, that it wrote the
    letter. The one durable record of the account it restores is the account's changelog record, the very
    record that cannot be built; a marker under a key of its own would be a new kind of changelog record
    (``LeadStore.restore`` takes every key but an account's for a lead state), and reading the DLQ back at
    each start would make a start as slow as the DLQ is long. So a restarted worker writes it once more, with
    the same key and event id."""
    if part in worker.erasure_letters or part in letters:
        log.warning("%s (dead-lettered already)", error)
        return
    lead_id = part[0]
    source = worker.settings.topic(ERASURES.name)
    letter = dead_letter(
        source, -1, -1, lead_id, None, "process", error, event_id=erasure_id(lead_id), error_type=error_type
    )
    dlq_key, dlq_value = encode_dead_letter(letter, worker.registry)
    batch.sends.append((worker.dlq_topic, dlq_key, dlq_value, DLQ_HEADERS, None))
    letters.add(part)
    log.error("%s", error, exc_info=(type(exc), exc, exc.__traceback__))


def written(worker: LeadWorker, letters: set[tuple[str, str]]) -> None:
    """Letters of a pass whose batch the broker acknowledged: remembered, and counted in
    ``leadpulse_dlq_records_total``. Not in ``leadpulse_events_invalid_total`` (they were, as
    ``process_error`` of the erasure log): an erasure the worker could not complete is not an invalid input
    record, and it pushed the invalid-input rate of ``LeadpulseDeadLettersHigh`` up at each restore."""
    worker.erasure_letters |= letters
    if worker.metrics and letters:
        worker.metrics.dlq_records.labels(source_topic=ERASURES.name, stage="process").inc(len(letters))


async def purge_erased(worker: LeadWorker) -> None:
    """After a restore: drop states and account entries of leads erased while this worker did not own
    their partitions (or before the tombstones were written), so no SLA timer or account keeps them."""
    if worker.erasures is None:
        return
    erased = [k.decode() for k in worker.store.lead_keys() if worker.erasures.is_erased(k.decode())]
    for _key, _partition, account in _decodable_accounts(worker):
        erased += [lead for lead in account.leads if worker.erasures.is_erased(lead)]
    if erased:
        records = [{"lead_id": lead, "anonymous_ids": []} for lead in sorted(set(erased))]
        await apply_erasures(worker, records)


def _decodable_accounts(worker: LeadWorker) -> list[tuple[bytes, int, AccountState]]:
    """Every account of the owned partitions (key, partition, state), but those whose stored state does not
    decode: logged and left out.

    Why: ``LeadStore.accounts`` without a callback raises at the first account that does not decode (a core
    bug, or a state written by another version), outside any guard: the purge of every restore raised out of
    the rebalance and then out of the poll loop's reload, so the worker exited at start and at every restart
    (a crash loop that processed nothing), and so did every erasure while it ran
    (tests/integration/test_worker_erasure_undecodable_account.py). Such an account cannot be checked for an
    erased lead, nor written; its own hops are dead-lettered by the per-record guard
    (``worker_failures.core_raised``), like the records of a lead state that does not decode."""

    def undecodable(key: bytes, exc: Exception) -> None:
        log.error(
            "account %r of the changelog does not decode: left out of the erasure pass (an erased lead "
            "it counts stays in it)",
            key.removeprefix(ACCOUNT_PREFIX).decode(errors="replace"),
            exc_info=(type(exc), exc, exc.__traceback__),
        )

    return worker.store.accounts(undecodable)
