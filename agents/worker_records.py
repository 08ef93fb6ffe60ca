"""The worker's per-batch path: each input record decoded, admitted (or dead-lettered), stepped through the
pure core (or folded into its account) and staged in a ``Batch``; then the batch written and committed.

Why its own module: this is the hot path (``leadpulse bench worker``), apart from the run loop around it
(``agents/worker.py``). Plain functions over the worker, one call each per record as the methods were: no
extra layer per event.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRecord, TopicPartition

from agents.account import AccountState, fold_lead_score, normalise_domain
from agents.core import StepResult, step
from agents.lead_store import ACCOUNT_PREFIX
from agents.state import LeadState
from agents.worker_batch import DLQ_HEADERS, Batch, NotWritable, RecordTooLarge, count, write_outputs
from agents.worker_clock import now_ms
from agents.worker_failures import core_raised, not_written, too_large
from schemas.errors import SchemaError
from streams.dlq import dead_letter, encode_dead_letter
from streams.event_hygiene import InadmissibleEvent, check_admissible, invalid_reason
from streams.partitioner import partition_of
from streams.producer import lead_key
from streams.topics import MAX_INPUT_RECORD_BYTES

if TYPE_CHECKING:
    from agents.worker import LeadWorker

log = logging.getLogger("agents.worker")  # the name it logged under before the split: log lines unchanged

ACCOUNT_HOP_LAST = "account_domain"  # lead_score fields up to this one hold all of HOP_FIELDS
Decoded = tuple[ConsumerRecord, str, dict[str, Any]]  # (message, schema, record)


async def process(worker: LeadWorker, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> None:
    assert worker.consumer is not None
    owned = worker.consumer.assignment()
    parts = {tp: records for tp, records in fetched.items() if tp in owned and records}
    if not parts:
        return
    again, new = _counted_before(worker, parts)
    if again:  # (after a start-over: records whose batch was counted, its checkpoint then lost)
        await _process(worker, again, counted=False)
        if worker.reload_pending or not new:
            return
    await _process(worker, new, counted=True)


def _counted_before(
    worker: LeadWorker, parts: dict[TopicPartition, list[ConsumerRecord]]
) -> tuple[dict[TopicPartition, list[ConsumerRecord]], dict[TopicPartition, list[ConsumerRecord]]]:
    """The records this worker counted in its metrics already, and the rest (``LeadWorker.counted_to``)."""
    marks = worker.counted_to
    if not marks:
        return {}, parts
    again, new = {}, {}
    for tp, records in parts.items():
        mark = marks.get(tp)
        if mark is None or records[0].offset >= mark:
            new[tp] = records
        elif records[-1].offset < mark:
            again[tp] = records
        else:
            cut = bisect_left(records, mark, key=lambda r: r.offset)
            again[tp], new[tp] = records[:cut], records[cut:]
    return again, new


async def _process(
    worker: LeadWorker, parts: dict[TopicPartition, list[ConsumerRecord]], counted: bool
) -> None:
    batch = Batch()
    now = now_ms()
    decoded = [d for records in parts.values() for m in records if (d := _decode(worker, m, batch))]
    # The batch's records in event-time order across topics (DESIGN §2: transitions follow event time):
    # a lead's download and the profile that disqualifies it, or an MQL and the follow-up answering it,
    # are applied in the order they happened, however far apart their topics were read. Stable sort:
    # records of one time keep their partition order. (Across batches arrival order still decides:
    # docs/scoring.md, "Event time and arrival order".)
    decoded.sort(key=_event_time)
    failed: dict[tuple[str, int, int], Exception] = {}
    failed_keys: set[bytes | None] = set()
    for message, schema, record in decoded:
        if failed and message.key in failed_keys:
            continue  # its state is half-updated: a failure now may be the first one's doing
        try:
            _handle(worker, message, schema, record, batch, now)
        except Exception as exc:  # a core bug, or a record it cannot take: see worker_failures.core_raised
            log.exception("the core raised for %s[%s]@%s", message.topic, message.partition, message.offset)
            failed[(message.topic, message.partition, message.offset)] = exc
            failed_keys.add(message.key)
    if failed:
        core_raised(worker, failed)
        return
    try:
        wave = await write_outputs(worker, batch)
    except RecordTooLarge as exc:
        too_large(worker, exc, decoded)
        return
    except NotWritable as exc:
        not_written(worker, exc, decoded)
        return
    # The batch's scores are out: counted now, once (a batch processed again after its checkpoint was lost
    # is not counted again); its states and offsets are written at the next checkpoint (worker.py).
    offsets = {tp: records[-1].offset + 1 for tp, records in parts.items()}
    if counted:
        if worker.metrics:
            count(worker, wave.batch, wave.scored_at)
        worker.counted_to.update(offsets)
    worker.checkpoint.add(wave, offsets)
    if worker.checkpoint.due(worker.commit_interval_s):
        await worker.checkpoint_now()


def _decode(worker: LeadWorker, message: ConsumerRecord, batch: Batch) -> Decoded | None:
    """The record's schema and fields, or None after dead-lettering it."""
    topic = message.topic
    batch.consumed[topic] = batch.consumed.get(topic, 0) + 1
    expected = worker.input_schema.get(topic)
    size = len(message.value or b"")
    if expected is not None and size > MAX_INPUT_RECORD_BYTES:
        reason = f"record of {size} bytes exceeds the {MAX_INPUT_RECORD_BYTES}-byte input event limit"
        _dead_letter(worker, batch, message, "validate", InadmissibleEvent("too_large", reason))
        return None
    try:
        if topic == worker.accounts_topic:  # only the fields the account fold reads, not the reasons
            schema, record = worker.codec.decode_head(message.value or b"", "lead_score", ACCOUNT_HOP_LAST)
        else:
            schema, record = worker.codec.decode(message.value or b"", expect=expected)
    except SchemaError as exc:
        _dead_letter(worker, batch, message, "decode", exc)
        return None
    return message, schema, record


def _handle(
    worker: LeadWorker, message: ConsumerRecord, schema: str, record: dict[str, Any], batch: Batch, now: int
) -> None:
    topic = message.topic
    if worker.failed_in_core:
        failure = worker.failed_in_core.get((topic, message.partition, message.offset))
        if failure is not None:  # raised in the core on an earlier pass of this batch
            _dead_letter(worker, batch, message, "process", failure)
            return
    if topic == worker.accounts_topic:
        _fold_account(worker, message, record, batch)
        return
    try:  # the record's timestamp, not now: a batch re-read after a crash is judged the same way
        check_admissible(record, message.timestamp or now)
    except InadmissibleEvent as exc:
        _dead_letter(worker, batch, message, "validate", exc)
        return
    event_time = record.get("event_time")
    if isinstance(event_time, int) and (worker.watermark_ms is None or event_time > worker.watermark_ms):
        worker.watermark_ms, worker.watermark_seen_at_ms = event_time, now
    key = message.key or (lead_key(record) or "").encode()
    if worker.erasures is not None and _erased(worker, key, record):
        batch.erased[topic] = batch.erased.get(topic, 0) + 1
        return
    home = _home(worker, key, topic)
    if home != message.partition or not message.key:
        # Keyed differently from the lead partitioning (no key, or another partitioner): route it to
        # the lead's partition through the identity topic rather than split the lead's state.
        batch.sends.append((worker.identity_topic, key, message.value or b"", None, None))
        return
    state = batch_state(worker, batch, key, home)
    result = step(state, key.decode(), schema, record, worker.rules, now, message.timestamp or None)
    apply_step(worker, batch, key, home, result)
    if message.timestamp:
        batch.arrived.append(message.timestamp)


def _fold_account(worker: LeadWorker, message: ConsumerRecord, record: dict[str, Any], batch: Batch) -> None:
    """A lead's new score, on its account's partition: fold it into the account (lead → account)."""
    if not message.key:
        return  # the worker always keys these by domain
    key = ACCOUNT_PREFIX + message.key
    if key in batch.accounts:
        account: AccountState | None = batch.accounts[key][1]
    else:
        account = worker.store.get_account(key)
    if worker.erasures is not None and worker.erasures.is_erased(record.get("lead_id")):
        return
    folded = fold_lead_score(account, record, worker.rules.account_window_ms)
    if folded is not None and folded is not account:
        batch.accounts[key] = (message.partition, folded)


def _erased(worker: LeadWorker, key: bytes, record: dict[str, Any]) -> bool:
    assert worker.erasures is not None
    return (
        worker.erasures.is_erased(key.decode())
        or worker.erasures.is_erased(record.get("lead_id"))
        or worker.erasures.is_erased(record.get("anonymous_id"))
    )


def _home(worker: LeadWorker, key: bytes, topic: str) -> int:
    known = worker.store.partition_of(key)
    if known is not None:
        return known
    count = worker._partitions_per_topic.get(topic)
    if count is None:
        assert worker.consumer is not None
        count = len(worker.consumer.partitions_for_topic(topic) or ()) or 1
        worker._partitions_per_topic[topic] = count
    return partition_of(key, count)


def batch_state(worker: LeadWorker, batch: Batch, key: bytes, home: int) -> LeadState | None:
    if key not in batch.states:
        batch.states[key] = worker.store.get(key)
        batch.home[key] = home
    return batch.states[key]


def apply_step(worker: LeadWorker, batch: Batch, key: bytes, home: int, result: StepResult) -> None:
    batch.states[key] = result.state
    batch.home[key] = home
    if result.changed:
        batch.dirty.add(key)
    for output in result.outputs:
        value = worker.codec.encode(output.schema, output.record)
        batch.sends.append((worker.output_topics[output.schema], output.key.encode(), value, None, None))
        batch.counted.append(output)
        domain = output.record.get("account_domain") if output.schema == "lead_score" else None
        if domain:
            batch.sends.append((worker.accounts_topic, normalise_domain(domain).encode(), value, None, None))
    for forward in result.forwards:
        value = worker.codec.encode(forward.schema, forward.event)
        batch.sends.append((worker.identity_topic, forward.key.encode(), value, None, None))


def _dead_letter(
    worker: LeadWorker, batch: Batch, message: ConsumerRecord, stage: str, exc: BaseException
) -> None:
    record = dead_letter(
        message.topic, message.partition, message.offset, message.key, message.value, stage, exc
    )
    dlq_key, dlq_value = encode_dead_letter(record, worker.registry)
    batch.sends.append((worker.dlq_topic, dlq_key, dlq_value, DLQ_HEADERS, None))
    batch.dead_letters.append((worker._unprefixed(message.topic), stage, invalid_reason(exc)))


def _event_time(decoded: Decoded) -> int:
    """Input events by event time; records without one (account hops) by their Kafka timestamp."""
    message, _schema, record = decoded
    event_time = record.get("event_time")
    return event_time if isinstance(event_time, int) else int(message.timestamp or 0)
