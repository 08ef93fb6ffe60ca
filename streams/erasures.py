"""The erasure log: ``leadpulse forget`` writes one ``lead_erased`` record per lead to the compacted
``leadpulse.internal.erasures`` topic; the worker and the sink read all of it and keep tailing it.

Why a topic and not a ClickHouse table or a file: every process that could bring an erased lead back (a
worker restoring state, a sink storing a replayed event) already talks to Kafka, and a one-partition,
never-expiring, compacted topic is the one place all of them read in the same order. Compaction keyed by
``lead_id`` keeps one record per lead, so the log stays as small as the number of erased leads.

An erased *identity* is the lead id or any anonymous id linked to the lead when it was erased: a row or an
event carrying either is the lead's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as SyncTopicPartition
from kafka.errors import KafkaError

from schemas.errors import SchemaError
from schemas.registry import default_registry
from streams.broker import aiokafka_client_config, create_topics, is_tansu, kafka_client_config
from streams.kafka_close import in_daemon_thread, start_client, stop_consumer
from streams.settings import Settings
from streams.tansu_compat import end_offsets
from streams.topics import ERASURES

log = logging.getLogger(__name__)

SCHEMA = ERASURES.schema


def erasure_id(lead_id: str) -> str:
    """Deterministic id of a lead's erasure: the same lead always gives the same id, so a repeated
    ``forget`` (or a consumer re-reading the log) is recognised as the same erasure."""
    return "erase-" + hashlib.sha256(f"lead_erased:{lead_id}".encode()).hexdigest()[:32]


def erasure_record(lead_id: str, anonymous_ids: Iterable[str], now_ms: int) -> dict[str, Any]:
    """The ``lead_erased`` record for ``lead_id``: anonymous ids de-duplicated and sorted (stable bytes)."""
    lead = lead_id.strip()
    if not lead:
        raise ValueError("lead_id: must not be empty")
    anonymous = sorted({a for a in anonymous_ids if a and a != lead})
    return {
        "erasure_id": erasure_id(lead),
        "lead_id": lead,
        "anonymous_ids": anonymous,
        "requested_at": int(now_ms),
    }


def identities(record: dict[str, Any]) -> set[str]:
    """Every identity an erasure record covers: the lead id and its linked anonymous ids."""
    return {str(record["lead_id"]), *(str(a) for a in record.get("anonymous_ids") or [])}


def scrub_top_leads(top_leads: list[dict[str, Any]], is_erased: Callable[[str | None], bool]) -> list[Any]:
    """An account roll-up's top-lead list without erased leads."""
    return [item for item in top_leads if not is_erased(item.get("lead_id"))]


def record_erased(schema: str, record: dict[str, Any], is_erased: Callable[[str | None], bool]) -> bool:
    """Whether a decoded record belongs to an erased identity (then it is not stored, re-published or
    replayed). An account roll-up never is: it is the account's, an aggregate over many leads, so its erased
    top leads are removed from it in place (as ``leadpulse forget`` does to the stored rows).

    The one predicate of the sink (before insert), ``leadpulse replay`` and ``leadpulse dlq replay``: each
    spelled its own, and ``dlq replay``'s did not look inside ``top_leads``."""
    if schema == "account_score":
        record["top_leads"] = scrub_top_leads(list(record.get("top_leads") or []), is_erased)
        return False
    return is_erased(record.get("lead_id")) or is_erased(record.get("anonymous_id"))


def erased_identities(settings: Settings) -> set[str]:
    """Every identity on the erasure log (sync, for the CLI): what ``replay`` and ``dlq replay`` leave out."""
    return {identity for record in read_all(settings) for identity in identities(record)}


def ensure_topic(settings: Settings) -> None:
    """Create the erasure topic if missing. A broker that auto-creates topics would give it several
    partitions, and every reader must see every erasure in one order, hence one partition."""
    try:
        create_topics(
            settings.bootstrap,
            settings.topic_prefix,
            [ERASURES],
            admin_config=kafka_client_config(settings),
            replication_factor=settings.topic_replication_factor,
        )
    except KafkaError as exc:  # no admin rights: the topic may still exist; producing/reading says if not
        log.warning("could not check/create topic %s: %s", settings.topic(ERASURES.name), exc)


def publish_erasure(settings: Settings, record: dict[str, Any]) -> None:
    """Publish one erasure and wait for the broker's acknowledgement; raises DeliveryError (or
    SchemaValidationError) if it is not durable, so ``forget`` never reports an erasure nobody will see."""
    from streams.producer import Producer

    ensure_topic(settings)
    value = default_registry().encode(SCHEMA, record)
    producer = Producer(settings, linger_ms=0)
    try:
        producer.send_encoded(settings.topic(ERASURES.name), str(record["lead_id"]), value)
        producer.flush(30.0)
    finally:
        producer.close()


def _decode(value: bytes | None, where: str) -> dict[str, Any] | None:
    if value is None:  # a tombstone: nothing to erase
        return None
    try:
        _, record = default_registry().decode(value, expect=SCHEMA)
    except SchemaError as exc:
        log.warning("erasure log %s: undecodable record skipped: %s", where, exc)
        return None
    return record


def read_all(settings: Settings, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every erasure record on the log, oldest first (sync, for the CLI). Reads up to the fetch high
    watermark, which Tansu reports correctly (its ListOffsets answer is not, DESIGN §11)."""
    topic = settings.topic(ERASURES.name)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        **kafka_client_config(settings),
    )
    records: list[dict[str, Any]] = []
    try:
        if not consumer.partitions_for_topic(topic):
            return records
        tp = SyncTopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200, max_records=5000)
            for msg in batch.get(tp, []):
                record = _decode(msg.value, f"{topic}[0]@{msg.offset}")
                if record is not None:
                    records.append(record)
            high = consumer.highwater(tp)
            if high is not None and consumer.position(tp) >= high:
                return records
        raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
    finally:
        consumer.close()


class ErasureLog:
    """The erasure log held in memory, read fully at ``start`` and tailed in a background task.

    ``is_erased`` answers from an in-memory set (a lookup per record on the hot path); ``drain_new`` hands
    each record to the owner once, so it can act on it (drop state, delete stored rows) in its own loop.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic(ERASURES.name)
        self._erased: set[str] = set()
        self._new: list[dict[str, Any]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.records = 0
        #: whether the broker is Tansu (``streams.broker.is_tansu``), known once ``start`` returned: the
        #: sink sizes its group timeouts by it without asking the broker a second time
        self.tansu = True

    @property
    def active(self) -> bool:
        """Whether any identity is erased (callers skip per-record checks while none is)."""
        return bool(self._erased)

    def is_erased(self, identity: str | None) -> bool:
        return identity is not None and identity in self._erased

    def drain_new(self) -> list[dict[str, Any]]:
        """Records that arrived since the last call (the first call also returns those read at start)."""
        new, self._new = self._new, []
        return new

    def _take(self, value: bytes | None, offset: int) -> None:
        record = _decode(value, f"{self.topic}[0]@{offset}")
        if record is None:
            return
        self._erased |= identities(record)
        self._new.append(record)
        self.records += 1

    async def start(self, timeout_s: float = 60.0) -> None:
        """Read the whole log (to its end offset at start) before returning, then tail it."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            **aiokafka_client_config(self.settings),
        )
        # First: with no broker this fails in about a second. The admin calls below would each wait 30 s
        # for a bootstrap and only warn (found by an ops audit: a worker took 61 s to say "cannot reach").
        await start_client(consumer)
        self._consumer = consumer
        try:
            # daemon threads: a stop during a hung broker's 30 s bootstrap timeout does not wait for them
            await in_daemon_thread(ensure_topic, self.settings)
            self.tansu = tansu = await in_daemon_thread(is_tansu, self.settings)
        except BaseException:
            await self.stop()
            raise
        tp = TopicPartition(self.topic, 0)
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await end_offsets(consumer, self.settings, [tp], tansu)).get(tp, 0)
            deadline = time.monotonic() + timeout_s
            while await consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"erasure log {self.topic}: not read to offset {end} within {timeout_s}s"
                    )
                batch = await consumer.getmany(tp, timeout_ms=500)
                for msg in batch.get(tp, []):
                    self._take(msg.value, msg.offset)
        except BaseException:
            await self.stop()
            raise
        log.info("erasure log %s: %d erasure(s) read", self.topic, self.records)
        self._task = asyncio.create_task(self._tail(tp), name="erasure-log-tail")

    async def _tail(self, tp: TopicPartition) -> None:
        assert self._consumer is not None
        while True:
            # Anything but a KafkaError ended the tail without a word: the process went on without seeing
            # new erasures (its worker kept scoring, its sink kept storing a forgotten lead) until a restart,
            # and stop() re-raised it. Now logged and retried, a record that cannot be taken too: skipped, its
            # lead was scored and stored for good after the forget (undecodable bytes are _decode's skip, so
            # what raises here is not the record's; one that raises at every try stalls the tail, logged at
            # each try, as it stops the next start).
            try:
                batch = await self._consumer.getmany(tp, timeout_ms=1000)
            except KafkaError as exc:  # the broker is away: keep the set we have, retry
                log.warning("erasure log %s: %s; retrying", self.topic, exc)
                await asyncio.sleep(1.0)
                continue
            except Exception:
                log.exception("erasure log %s: fetch failed; retrying", self.topic)
                await asyncio.sleep(1.0)
                continue
            for msg in batch.get(tp, []):
                try:
                    self._take(msg.value, msg.offset)
                except Exception:
                    log.exception("erasure log %s[0]@%d: record not taken; retrying", self.topic, msg.offset)
                    self._consumer.seek(tp, msg.offset)  # the rest of the batch comes again after it
                    await asyncio.sleep(1.0)
                    break

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)
