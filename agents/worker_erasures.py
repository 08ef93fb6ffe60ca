"""Erasure in the worker: an erased lead's states dropped and tombstoned durably, its score taken out of its
account, and after a restore whatever of it the changelog still held purged.

The per-event check (drop an erased lead's inputs) stays on the worker's hot path (``LeadWorker._erased``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from agents.account import without_lead
from agents.kafka_batches import Record
from agents.worker_batch import Batch, flush, send

if TYPE_CHECKING:
    from agents.worker import LeadWorker


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
    tombstones: list[Record] = []
    for record in records:
        lead_id = record["lead_id"]
        lead = worker.store.get(lead_id.encode())
        aliases = lead.aliases if lead is not None else []
        for identity in {lead_id, *record.get("anonymous_ids", []), *aliases}:
            key = identity.encode()
            partition = worker.store.partition_of(key)
            if partition is not None:
                worker.store.delete(key)
                tombstones.append((worker.state_topic, key, None, None, partition))
                tombstones.append((worker.output_topics["lead_score"], key, None, None, None))
        for key, partition, account in worker.store.accounts_with_lead(lead_id):
            batch.accounts[key] = (partition, without_lead(account, lead_id))
    await flush(worker, batch)
    await send(worker, tombstones)


async def purge_erased(worker: LeadWorker) -> None:
    """After a restore: drop states and account entries of leads erased while this worker did not own
    their partitions (or before the tombstones were written), so no SLA timer or account keeps them."""
    if worker.erasures is None:
        return
    erased = [k.decode() for k in worker.store.lead_keys() if worker.erasures.is_erased(k.decode())]
    for _key, _partition, account in worker.store.accounts():
        erased += [lead for lead in account.leads if worker.erasures.is_erased(lead)]
    if erased:
        records = [{"lead_id": lead, "anonymous_ids": []} for lead in sorted(set(erased))]
        await apply_erasures(worker, records)
