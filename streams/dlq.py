"""Dead letters: the one piece of middleware turning a typed error into a ``dead_letter`` record on ``dlq``.

Why one module: the worker (decode/validate/process), the ClickHouse sink (permanent insert errors) and the
notifier (webhook give-up) must write the same record, with the original key and value bytes and the source
topic/partition/offset, so that ``leadpulse dlq replay`` can put the *original bytes* back on their topic
after a fix. Steps return or raise typed errors; only this module knows the record's shape.

``dead_letter(...)`` is pure (no clock unless none is passed, no I/O); ``publish``/``list_dead_letters``/
``replay`` are the imperative shell used by the CLI (``leadpulse dlq list|show|replay``) and tests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.coercion import to_millis
from schemas.errors import SchemaError
from schemas.registry import SchemaRegistry, default_registry
from streams.producer import Producer
from streams.reader import Decoded, read_topic
from streams.settings import Settings
from streams.topics import BY_NAME, DLQ, contract_name

STAGES = ("decode", "validate", "process", "sink", "webhook", "collector")

#: Kafka header naming the component that wrote a dead letter. A poison input record is dead-lettered by
#: each consumer of its topic (the worker and the sink), and the two letters differ only by this. A header,
#: not a field: adding a field to ``dead_letter`` would be a schema change for every DLQ reader.
WRITER_HEADER = "leadpulse-writer"
WRITERS = ("worker", "sink", "notifier", "cli")


def writer_headers(writer: str) -> list[tuple[str, bytes]]:
    """The headers of a dead letter written by ``writer``."""
    if writer not in WRITERS:
        raise ValueError(f"writer: {writer!r} is not one of {', '.join(WRITERS)}")
    return [(WRITER_HEADER, writer.encode())]


def writer_of(headers: Iterable[tuple[str, bytes | None]]) -> str | None:
    """Who wrote a dead letter, from its headers; None for letters written before the header existed."""
    for name, value in headers:
        if name == WRITER_HEADER and value:
            return value.decode("utf-8", errors="replace")
    return None


#: Largest original value copied into a dead letter (brokers default to 1 MB messages).
MAX_VALUE_BYTES = 256 * 1024


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | str | None,
    value: bytes | None,
    stage: str,
    error: BaseException | str,
    *,
    event_id: str | None = None,
    failed_at: int | None = None,
    registry: SchemaRegistry | None = None,
    error_type: str | None = None,
) -> dict[str, Any]:
    """A ``dead_letter`` record for a failed record; ``partition``/``offset`` are -1 when not from Kafka.

    The event id is read from the value when it decodes (a sink or webhook failure), so that a dead letter
    can be matched to the event; undecodable bytes simply have none. ``error_type`` overrides the type
    taken from ``error`` (a message given as text has type ``Error``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage: {stage!r} is not one of {', '.join(STAGES)}")
    if event_id is None and value:
        try:
            record = (registry or default_registry()).decode(value)[1]
            found = record.get("event_id") or record.get("notification_id")
            event_id = found if isinstance(found, str) else None
        except SchemaError:
            event_id = None
    kind = "Error" if isinstance(error, str) else type(error).__name__
    message = error if isinstance(error, str) else (str(error) or kind)
    if value is not None and len(value) > MAX_VALUE_BYTES:
        # keep the dead letter itself under the broker's message size; the original stays at its offset
        message = f"{message[:3000]} [value truncated to {MAX_VALUE_BYTES} of {len(value)} bytes]"
        value = value[:MAX_VALUE_BYTES]
    return {
        "source_topic": topic,
        "partition": int(partition),
        "offset": int(offset),
        "stage": stage,
        "error_type": error_type or kind,
        "error": message[:4000],
        "key": key.encode() if isinstance(key, str) else key,
        "value": value,
        "failed_at": int(time.time() * 1000) if failed_at is None else failed_at,
        "event_id": event_id,
    }


def encode_dead_letter(
    record: dict[str, Any], registry: SchemaRegistry | None = None
) -> tuple[bytes | None, bytes]:
    """(key, value) to produce on the DLQ topic: the original key, so a lead's dead letters stay together."""
    return record.get("key"), (registry or default_registry()).encode("dead_letter", record)


def publish(producer: Producer, records: Iterable[dict[str, Any]], writer: str = "cli") -> int:
    """Write dead letters through the SDK producer and wait for the broker; returns how many."""
    count = 0
    topic = producer.settings.topic(DLQ.name)
    headers = writer_headers(writer)
    for record in records:
        key, value = encode_dead_letter(record, producer.registry)
        producer.send_encoded(topic, key, value, headers=headers)
        count += 1
    producer.flush()
    return count


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as read back: where it sits on ``dlq`` and the decoded record."""

    dlq_partition: int
    dlq_offset: int
    record: dict[str, Any]
    writer: str | None = None  # WRITER_HEADER; None for letters written before it existed

    @property
    def address(self) -> str:
        return f"{self.dlq_partition}:{self.dlq_offset}"

    def decoded_original(self, registry: SchemaRegistry | None = None) -> tuple[str, dict[str, Any]] | str:
        """Decoding attempt of the original value: (schema, record), or the reason it does not decode."""
        value = self.record.get("value")
        if not value:
            return "no original value"
        try:
            return (registry or default_registry()).decode(value)
        except SchemaError as exc:
            return f"{type(exc).__name__}: {exc}"


def parse_since(text: str | None, now_ms: int | None = None) -> int | None:
    """``--since``: a duration back from now (``90s``, ``30m``, ``2h``, ``7d``) or an ISO-8601 time, in ms."""
    if not text:
        return None
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    match = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text)
    if match:
        unit = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[match.group(2)]
        return now_ms - int(match.group(1)) * unit
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since: expected a duration like 30m/2h/7d or an ISO-8601 time, got {text!r}"
        ) from None
    return to_millis(moment)  # exact: the float timestamp() * 1000 came out a millisecond early at times


def check_filters(topic: str | None, stage: str | None, prefix: str = "") -> None:
    """A filter that can match nothing is a typo: say so, naming the option, instead of listing nothing."""
    if topic is not None and contract_name(topic, prefix) not in BY_NAME:
        raise ValueError(f"--topic: unknown topic {topic!r}; topics: {', '.join(sorted(BY_NAME))}")
    if stage is not None and stage not in STAGES:
        raise ValueError(f"--stage: expected one of {', '.join(STAGES)}, got {stage!r}")


def matches(
    record: dict[str, Any], *, topic: str | None, since_ms: int | None, stage: str | None, prefix: str = ""
) -> bool:
    """Filter of list/replay: ``topic`` may be given with or without the deployment prefix."""
    if topic is not None and record["source_topic"] not in (topic, prefix + topic):
        return False
    if since_ms is not None and record["failed_at"] < since_ms:
        return False
    return stage is None or record["stage"] == stage


def read_dead_letters(
    settings: Settings, *, bootstrap: str | None = None, idle_ms: int = 1000
) -> Iterator[DeadLetter]:
    """Every dead letter on the DLQ topic, oldest first per partition; undecodable DLQ records are skipped."""
    for item in read_topic(settings, settings.topic(DLQ.name), bootstrap=bootstrap, idle_ms=idle_ms):
        if isinstance(item, Decoded) and item.schema == "dead_letter":
            yield DeadLetter(item.partition, item.offset, item.record, writer_of(item.headers))


def list_dead_letters(
    settings: Settings,
    *,
    topic: str | None = None,
    since_ms: int | None = None,
    stage: str | None = None,
    limit: int = 50,
    bootstrap: str | None = None,
) -> list[DeadLetter]:
    """The most recent ``limit`` dead letters matching the filters, newest last."""
    found = [
        d
        for d in read_dead_letters(settings, bootstrap=bootstrap)
        if matches(d.record, topic=topic, since_ms=since_ms, stage=stage, prefix=settings.topic_prefix)
    ]
    found.sort(key=lambda d: (d.record["failed_at"], d.dlq_partition, d.dlq_offset))
    return found[-limit:] if limit > 0 else found


def find_dead_letters(settings: Settings, address: str, *, bootstrap: str | None = None) -> list[DeadLetter]:
    """Dead letters at ``OFFSET`` (any DLQ partition) or ``PARTITION:OFFSET`` on the DLQ topic."""
    part_text, _, offset_text = address.rpartition(":")
    if not offset_text.isdigit() or (part_text and not part_text.isdigit()):
        raise ValueError(f"expected OFFSET or PARTITION:OFFSET of the dlq topic, got {address!r}")
    offset, partition = int(offset_text), int(part_text) if part_text else None
    return [
        d
        for d in read_dead_letters(settings, bootstrap=bootstrap)
        if d.dlq_offset == offset and (partition is None or d.dlq_partition == partition)
    ]


@dataclass
class ReplayReport:
    replayed: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (dlq address, reason)
    # dlq addresses of account roll-ups replayed without the erased leads of their top_leads
    scrubbed: list[str] = field(default_factory=list)


#: What ``dead_letter`` appends to the error of a letter whose value it cut (the schema has no flag for it).
_TRUNCATED = re.compile(r"\[value truncated to (\d+) of (\d+) bytes\]$")


def replayable(record: dict[str, Any], prefix: str) -> str | None:
    """Why a dead letter cannot go back to its source topic, or None when it can."""
    if not record.get("value"):
        return "no original value bytes"
    truncated = _TRUNCATED.search(record.get("error") or "")
    if truncated:
        # Re-publishing the cut bytes would put a different, corrupt record on the topic. Only an original
        # over MAX_VALUE_BYTES is cut, far over the input record limit, so it would be dead-lettered again.
        kept, size = truncated.groups()
        return f"value truncated in the dead letter ({kept} of {size} bytes); replaying it would corrupt it"
    name = record["source_topic"]
    name = name[len(prefix) :] if prefix and name.startswith(prefix) else name
    if name not in BY_NAME or name == DLQ.name:
        return f"source {record['source_topic']!r} is not a catalogue topic"
    return None


#: Why ``replay`` skips a dead letter holding a record of a lead erased with ``leadpulse forget``.
ERASED = "lead erased with `leadpulse forget`"


def _erased_identities(settings: Settings, bootstrap: str | None) -> set[str]:
    from streams.erasures import erased_identities

    if bootstrap is not None:
        settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    return erased_identities(settings)


def _erased_in(letter: DeadLetter, gone: set[str]) -> tuple[bool, bytes | None]:
    """Whether a dead letter's original (its key, or its decoded value) is an erased identity's; and, for an
    account roll-up naming an erased lead in ``top_leads``, the value to replay instead: the record without
    that lead.

    Why skipped: replayed, the record, e.g. a profile with the email in plain text, would be back on its
    topic after ``leadpulse forget``; the worker, the sink and the notifier drop it, but the topic (kept
    forever for profiles) would hold it again (docs/privacy.md). Why an account roll-up is scrubbed, not
    skipped: it is the account's record (an aggregate over many leads), which the sink stores and ``forget``
    keeps without the lead (``streams.erasures.record_erased``); replayed as it was, it put the erased lead's
    id back on the compacted, kept-forever ``accounts.scores``."""
    from streams.erasures import record_erased

    key = letter.record.get("key")
    if key and key.decode("utf-8", errors="replace") in gone:
        return True, None
    decoded = letter.decoded_original()
    if isinstance(decoded, str):
        return False, None
    schema, record = decoded
    named = len(record.get("top_leads") or [])
    if record_erased(schema, record, gone.__contains__):
        return True, None
    if schema == "account_score" and len(record["top_leads"]) < named:
        return False, default_registry().encode(schema, record)
    return False, None


def replay(
    settings: Settings,
    *,
    topic: str | None = None,
    since_ms: int | None = None,
    stage: str | None = None,
    dry_run: bool = False,
    bootstrap: str | None = None,
) -> ReplayReport:
    """Re-publish the original key and value bytes of matching dead letters to their source topics.

    Each original record (source topic, partition, offset) goes back once, however many consumers
    dead-lettered it; records of an erased identity are left out, and an account roll-up naming an erased
    lead goes back without it (``_erased_in``). Safe to repeat: downstream dedups by event id (worker) and
    notification id (webhook receivers). Run it after the fix (schema added to ``schemas/history/``, bug
    fixed, endpoint back), or the records come back.
    """
    report = ReplayReport()
    letters = list_dead_letters(
        settings, topic=topic, since_ms=since_ms, stage=stage, limit=0, bootstrap=bootstrap
    )
    gone = _erased_identities(settings, bootstrap) if letters else set()
    todo = []
    first_of: dict[tuple[str, int, int], str] = {}  # original record's address -> dlq address replaying it
    for letter in letters:
        record = letter.record
        reason = replayable(record, settings.topic_prefix)
        scrubbed = None
        if reason is None and gone:
            erased, scrubbed = _erased_in(letter, gone)
            reason = ERASED if erased else None
        # The worker and the sink both consume the inputs, so a poison record has two dead letters (and a
        # retried delivery may have more): its original goes back once.
        origin = (record["source_topic"], record["partition"], record["offset"])
        if reason is None and record["offset"] >= 0 and origin in first_of:
            reason = f"same original record as dead letter {first_of[origin]}"
        if reason:
            report.skipped.append((letter.address, reason))
        else:
            first_of.setdefault(origin, letter.address)
            todo.append((record, record["value"] if scrubbed is None else scrubbed))
            if scrubbed is not None:
                report.scrubbed.append(letter.address)
    for record, _value in todo:
        report.by_topic[record["source_topic"]] = report.by_topic.get(record["source_topic"], 0) + 1
    if dry_run or not todo:
        return report
    with Producer(settings, bootstrap=bootstrap) as producer:
        for record, value in todo:
            producer.send_encoded(record["source_topic"], record.get("key"), value)
        producer.flush()
    report.replayed = len(todo)
    return report
