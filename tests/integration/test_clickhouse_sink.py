"""The ClickHouse sink against a real Tansu broker and embedded chDB: every record stored once, offsets
committed only after the insert, retries deduplicated (views included), bad rows dead-lettered, and a
``kill -9``-ed sink process restarted without losing or doubling an event."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import fastavro
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AIOTopicPartition
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from schemas.registry import SCHEMA_DIR, SOE_MAGIC, default_registry, schema_fingerprint
from sinks.batch import BatchPolicy
from sinks.erase import apply_erasure, remaining_rows
from sinks.errors import SinkBackpressure
from sinks.query_service import client_runner
from sinks.recent_ids import RecentIds
from sinks.replay import is_replayed, replay
from sinks.rows import Origin, TableSpec, to_row
from sinks.sink_hooks import SinkHooks
from sinks.sink_loop import ClickHouseSinkLoop, sink_group
from sinks.stored_positions import stored_gaps
from streams.broker import free_port
from streams.dlq import writer_of
from streams.erasures import ErasureLog, erasure_record, publish_erasure
from streams.kafka_close import CoordinatorUnreachable
from streams.producer import DeliveryError, Producer
from streams.reader import Decoded, read_topic
from streams.samples import sample_events
from streams.settings import Settings

pytestmark = pytest.mark.integration

EVENT_SCHEMAS = ("web_visit", "email_click", "download", "content_view")


class FaultyClient:
    """A real client with injected faults: ``fail_before`` refuses inserts without storing anything;
    ``lose_ack`` stores the first insert then raises as if the connection dropped before the answer."""

    def __init__(self, real: Client) -> None:
        self.real = real
        self.fail_before = False
        self.lose_ack = 0
        self.insert_calls = 0

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        return self._faulty(self.real.insert, *args, **kwargs)

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        return self._faulty(self.real.raw_insert, *args, **kwargs)

    def _faulty(self, insert: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.insert_calls += 1
        if self.fail_before:
            raise OperationalError("injected: ClickHouse unreachable")
        result = insert(*args, **kwargs)
        if self.lose_ack > 0:
            self.lose_ack -= 1
            raise OperationalError("injected: connection reset after the insert was sent")
        return result

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.query(*args, **kwargs)


class RunningSink:
    def __init__(self, loop: ClickHouseSinkLoop) -> None:
        self.loop = loop
        self.stop = threading.Event()
        self.thread = threading.Thread(target=loop.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "sink loop did not stop"


@pytest.fixture
def start_sink(broker_settings: Settings) -> Iterator[Callable[..., RunningSink]]:
    started: list[RunningSink] = []

    def start(client: Any, policy: BatchPolicy | None = None) -> RunningSink:
        loop = ClickHouseSinkLoop(broker_settings, client, policy=policy or BatchPolicy(500, 0.2))
        running = RunningSink(loop)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.close()


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def count(ch: Client, sql: str, **params: Any) -> int:
    return int(ch.query(sql, parameters=params).result_rows[0][0])


def produce(settings: Settings, schema: str, n: int, seed: int, **changes: Any) -> list[dict[str, Any]]:
    records = []
    with Producer(settings) as producer:
        for record in sample_events(schema, n, seed=seed):
            record = {**record, "event_id": f"{settings.topic_prefix}{record['event_id']}", **changes}
            producer.send(schema, record)
            records.append(record)
    return records


def committed_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        group = sink_group(settings)
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def end_offsets(settings: Settings, topic: str) -> dict[tuple[str, int], int]:
    """Log end per partition from fetch high watermarks (Tansu's ListOffsets is wrong, DESIGN §11)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(consumer.highwater(tp) is None for tp in tps):
            consumer.poll(timeout_ms=200)
        return {(tp.topic, tp.partition): consumer.highwater(tp) or 0 for tp in tps}
    finally:
        consumer.close()


def topic_rows(ch: Client, table: str, settings: Settings) -> int:
    return count(
        ch,
        f"SELECT count() FROM leadpulse.{table} WHERE startsWith(topic, {{p:String}})",
        p=settings.topic_prefix,
    )


def test_records_of_every_input_and_output_topic_land_in_their_tables_and_offsets_commit(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    settings = broker_settings
    for schema in EVENT_SCHEMAS:
        produce(settings, schema, 30, seed=1)
    produce(settings, "lead_identified", 20, seed=1)
    produce(settings, "sales_activity", 10, seed=1)
    with Producer(settings) as producer:
        producer.send(
            "stage_transition",
            {
                "lead_id": "L1",
                "from_stage": "lead",
                "to_stage": "mql",
                "reason": "score_threshold",
                "trigger_event_id": "e1",
                "score": 101.0,
                "occurred_at": 1_790_000_000_000,
                "transition_id": f"{settings.topic_prefix}t1",
            },
        )
        domain = f"{settings.topic_prefix}acme.example"
        producer.send(
            "account_score",
            {
                "domain": domain,
                "score": 150.5,
                "leads": 2,
                "top_leads": [{"lead_id": "L1", "score": 100.5}, {"lead_id": "L2", "score": 50.0}],
                "as_of": 1_790_000_000_000,
                "computed_at": 1_790_000_000_500,
            },
        )
    sink = start_sink(ch)
    wait_for(
        lambda: (
            topic_rows(ch, "events", settings) == 120
            and topic_rows(ch, "leads", settings) == 20
            and topic_rows(ch, "sales_activities", settings) == 10
            and topic_rows(ch, "stage_transitions", settings) == 1
            and topic_rows(ch, "account_scores", settings) == 1
        ),
        what="all rows stored",
    )
    latest = ch.query(
        "SELECT score, leads, top_leads FROM leadpulse.account_scores_latest WHERE domain = {d:String}",
        parameters={"d": domain},
    ).result_rows
    assert [(r[0], r[1], json.loads(r[2])[0]["lead_id"]) for r in latest] == [(150.5, 2, "L1")]
    wait_for(
        lambda: (
            committed_offsets(settings).get((settings.topic("events.web_visits"), 0)) is not None
            or sum(committed_offsets(settings).values()) >= 161
        ),
        what="offsets committed",
    )
    sink.close()
    committed = committed_offsets(settings)
    for topic in ("events.web_visits", "leads.profiles", "leads.stage_transitions"):
        for tp, end in end_offsets(settings, settings.topic(topic)).items():
            assert committed.get(tp, 0) == end, tp
    stored_emails = ch.query(
        "SELECT email_hash FROM leadpulse.leads WHERE startsWith(topic, {p:String})",
        parameters={"p": settings.topic_prefix},
    ).result_rows
    assert all(len(h) == 64 and "@" not in h for (h,) in stored_emails)


def test_batch_resent_after_lost_acknowledgement_is_stored_once_also_in_the_views(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    settings = broker_settings
    records = produce(settings, "content_view", 200, seed=2, content_id=f"{settings.topic_prefix}item")
    faulty = FaultyClient(ch)
    faulty.lose_ack = 1  # the first insert is stored, but the sink sees a failure and re-sends it
    sink = start_sink(faulty, BatchPolicy(10_000, 0.5))
    wait_for(
        lambda: topic_rows(ch, "events", settings) >= len(records) and faulty.insert_calls >= 2,
        what="events stored and re-sent",
    )
    wait_for(lambda: sum(committed_offsets(settings).values()) == len(records), what="offsets committed")
    sink.close()
    assert sink.loop.stats.failures >= 1
    assert topic_rows(ch, "events", settings) == len(records)  # raw rows, no FINAL: the dedup token worked
    usage = count(
        ch,
        "SELECT sum(events) FROM leadpulse.content_usage_daily WHERE content_id = {c:String}",
        c=f"{settings.topic_prefix}item",
    )
    assert usage == len(records)


def _older_writer(history_file: str, record: dict[str, Any]) -> bytes:
    """``record`` Single Object Encoded with an older writer schema (``schemas/history/``): the sink cannot
    ship it undecoded, it resolves and re-encodes it as current."""
    old = json.loads((SCHEMA_DIR / "history" / history_file).read_text())
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(old), record)
    return SOE_MAGIC + struct.pack("<Q", schema_fingerprint(old)) + body.getvalue()


def _old_web_visit(event_id: str, lead_id: str) -> bytes:
    """A web visit in the first writer schema (web_visit.v1.avsc)."""
    return _older_writer(
        "web_visit.v1.avsc",
        {
            "event_id": event_id,
            "event_time": 1_790_000_000_000,
            "anonymous_id": None,
            "lead_id": lead_id,
            "source": "v1",
            "url": "https://x.example/pricing",
            "page_category": "pricing",
            "referrer": None,
        },
    )


def _old_content_view(event_id: str) -> bytes:
    """A content view in the writer schema before page_view_id (content_view.v1.avsc)."""
    return _older_writer(
        "content_view.v1.avsc",
        {
            "event_id": event_id,
            "event_time": 1_790_000_000_000,
            "anonymous_id": None,
            "lead_id": "L-pv",
            "source": "v1",
            "received_at": None,
            "content_id": "cs-1",
            "content_type": "case_study",
            "dwell_ms": 1_000,
            "percent_viewed": 20.0,
            "channel": "web",
        },
    )


def test_page_view_ids_are_stored_and_a_record_written_before_them_without_one(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    """The fast path ships the body undecoded: ClickHouse must find page_view_id in it (current writer);
    a record of the version before it is re-encoded as current, with page_view_id null."""
    settings = broker_settings
    prefix = f"{settings.topic_prefix}pv-"
    reports = [
        {**record, "event_id": f"{prefix}{i}", "page_view_id": f"{prefix}view-{i % 2}"}
        for i, record in enumerate(sample_events("content_view", 4, seed=8))
    ]
    with Producer(settings) as producer:
        for record in reports:
            producer.send("content_view", record)
        producer.send_encoded(
            settings.topic("events.content_views"), b"L-pv", _old_content_view(f"{prefix}old")
        )
    sink = start_sink(ch)
    stored = "SELECT count() FROM leadpulse.events WHERE startsWith(event_id, {p:String})"
    wait_for(lambda: count(ch, stored, p=prefix) == 5, what="five content views stored")
    sink.close()
    rows = ch.query(
        "SELECT event_id, page_view_id FROM leadpulse.events FINAL WHERE startsWith(event_id, {p:String})",
        parameters={"p": prefix},
    ).result_rows
    assert dict(rows) == {**{r["event_id"]: r["page_view_id"] for r in reports}, f"{prefix}old": None}


def test_records_re_sent_on_their_partition_are_stored_once_also_in_the_daily_views(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    """A client retrying a request whose first attempt landed, or a worker re-emitting after a crash, puts
    the same record on the same partition at a new offset: one row, counted once by the views, without
    FINAL. Only the partition's memory catches it: the same id under another key is stored again."""
    settings = broker_settings
    registry = default_registry()
    content = f"{settings.topic_prefix}resent-item"
    views = [
        {**record, "event_id": f"{settings.topic_prefix}{record['event_id']}", "content_id": content}
        for record in sample_events("content_view", 30, seed=5)
    ]
    transition = {
        "lead_id": "L-resent",
        "from_stage": "nurturing",
        "to_stage": "mql",
        "reason": "score_threshold",
        "trigger_event_id": "e1",
        "score": 101.0,
        "occurred_at": 1_600_000_000_000,  # a day no other test of this module uses (funnel_daily)
        "transition_id": f"{settings.topic_prefix}t-resent",
    }
    old_id = f"{settings.topic_prefix}old-writer-visit"
    views_topic = settings.topic("events.content_views")
    transitions = settings.topic("leads.stage_transitions")
    visits = settings.topic("events.web_visits")

    def send(view_records: list[dict[str, Any]], view_key: bytes, copies: int) -> None:
        with Producer(settings) as producer:
            for record in view_records:
                producer.send_encoded(views_topic, view_key, registry.encode("content_view", record))
            for _ in range(copies):
                producer.send_encoded(
                    transitions, b"L-resent", registry.encode("stage_transition", transition)
                )
                producer.send_encoded(visits, b"L-old", _old_web_visit(old_id, "L-old"))

    sink = start_sink(ch, BatchPolicy(10_000, 0.3))
    send(views, b"k", 1)
    # Every first copy stored (committed, not just visible: the sink inserts a batch while it takes the
    # next records, and a copy taken before its first one's insert returned is stored again).
    wait_for(lambda: sum(committed_offsets(settings).values()) == 32, what="first copies committed")
    # The re-sends come later, in other inserts: ClickHouse would not collapse them within one block.
    send(views[:10], b"k", 2)
    send(views[:1], b"another-key", 0)
    wait_for(lambda: sum(committed_offsets(settings).values()) == 47, what="all offsets committed")
    sink.close()
    assert sink.loop.stats.duplicates == 14  # 10 content views, 2 transitions, 2 old-writer visits
    plain = "SELECT count() FROM leadpulse.{} WHERE {} = {{v:String}}"  # no FINAL: raw rows
    assert count(ch, plain.format("events", "content_id"), v=content) == 31  # + the other partition's copy
    assert count(ch, plain.format("events", "event_id"), v=old_id) == 1
    assert count(ch, plain.format("stage_transitions", "transition_id"), v=transition["transition_id"]) == 1
    usage = "SELECT sum(events) FROM leadpulse.content_usage_daily WHERE content_id = {c:String}"
    assert count(ch, usage, c=content) == 31
    funnel = count(
        ch,
        "SELECT sum(transitions) FROM leadpulse.funnel_daily WHERE day = toDate({t:DateTime64(3)})",
        t=transition["occurred_at"] / 1000,
    )
    assert funnel == 1


def test_a_refused_copy_never_hides_a_good_one_and_a_poison_copy_is_dead_lettered(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    """The recent-id memory must not turn a refused or undecodable record into a silent duplicate: a
    corrected re-send after a refused first copy (same batch) is stored, and bytes that start with a stored
    event_id but do not decode (a wrong schema under the topic's fingerprint) are dead-lettered."""
    settings = broker_settings
    registry = default_registry()
    topic = settings.topic("events.content_views")
    good = {
        **next(iter(sample_events("content_view", 1, seed=8))),
        "event_id": f"{settings.topic_prefix}fixed",
    }
    refused = {**good, "dwell_ms": -5}  # ClickHouse's CHECK refuses it
    sink = start_sink(ch, BatchPolicy(10_000, 0.5))
    with Producer(settings) as producer:  # one batch: the refused copy first
        producer.send_encoded(topic, b"k", registry.encode("content_view", refused))
        producer.send_encoded(topic, b"k", registry.encode("content_view", good))
    by_id = "SELECT count() FROM leadpulse.events WHERE event_id = {e:String}"
    wait_for(lambda: count(ch, by_id, e=good["event_id"]) == 1, what="the corrected copy stored")
    valid = registry.encode("content_view", good)
    poison = valid[: len(valid) - 3]  # its id, time and identities read, the rest truncated
    with Producer(settings) as producer:
        producer.send_encoded(topic, b"k", poison)
    wait_for(lambda: sink.loop.stats.dead_lettered == 2, what="refused and poison copies dead-lettered")
    wait_for(lambda: sum(committed_offsets(settings).values()) == 3, what="all offsets committed")
    sink.close()
    assert sink.loop.stats.duplicates == 0
    assert count(ch, by_id, e=good["event_id"]) == 1
    stored = ch.query(
        "SELECT dwell_ms FROM leadpulse.events WHERE event_id = {e:String}",
        parameters={"e": good["event_id"]},
    ).result_rows
    assert stored == [(good["dwell_ms"],)]


def test_a_re_send_of_a_corrected_copy_taken_beside_its_refused_first_copy_is_not_stored_again(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    """A refused first copy and its corrected re-send taken into the same batch: the corrected one is
    stored, and a later re-send of it is a duplicate like any other. The recent-id memory kept only the
    first copy's offset, and forgetting the refused copy forgot the id, so the third copy was stored again
    (two rows, counted twice by the daily views)."""
    settings = broker_settings
    registry = default_registry()
    topic = settings.topic("events.content_views")
    content = f"{settings.topic_prefix}third-copy-item"
    good = {
        **next(iter(sample_events("content_view", 1, seed=9))),
        "event_id": f"{settings.topic_prefix}corrected",
        "content_id": content,
    }
    refused = {**good, "dwell_ms": -5}  # ClickHouse's CHECK refuses it
    sink = start_sink(ch, BatchPolicy(10_000, 0.5))
    with Producer(settings) as producer:  # one batch: the refused copy first
        producer.send_encoded(topic, b"k", registry.encode("content_view", refused))
        producer.send_encoded(topic, b"k", registry.encode("content_view", good))
    wait_for(lambda: sum(committed_offsets(settings).values()) == 2, what="both copies handled")
    assert sink.loop.stats.dead_lettered == 1
    with Producer(settings) as producer:  # the client re-sends the corrected copy, in a later insert
        producer.send_encoded(topic, b"k", registry.encode("content_view", good))
    wait_for(lambda: sum(committed_offsets(settings).values()) == 3, what="the re-send handled")
    sink.close()
    assert sink.loop.stats.duplicates == 1
    by_id = "SELECT count() FROM leadpulse.events WHERE event_id = {e:String}"  # no FINAL: raw rows
    assert count(ch, by_id, e=good["event_id"]) == 1
    usage = "SELECT sum(events) FROM leadpulse.content_usage_daily WHERE content_id = {c:String}"
    assert count(ch, usage, c=content) == 1


def test_records_leadpulse_replay_re_publishes_are_not_stored_again(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    """``leadpulse replay`` reads its records from ClickHouse: the workers need them again, ClickHouse does
    not (beyond the recent-id memory, the views would count every replayed event twice)."""
    settings = broker_settings
    start = 1_500_000_000_000  # 2017: a window no other test of this module stores events in
    content = f"{settings.topic_prefix}replayed-item"
    views = produce(settings, "content_view", 20, seed=6, content_id=content, event_time=start)
    activities = produce(settings, "sales_activity", 3, seed=6, event_time=start + 1)
    sink = start_sink(ch, BatchPolicy(10_000, 0.3))
    by_content = "SELECT count() FROM leadpulse.events WHERE content_id = {c:String}"
    wait_for(lambda: count(ch, by_content, c=content) == len(views), what="views stored")
    ours = "SELECT count() FROM leadpulse.sales_activities WHERE startsWith(event_id, {p:String})"
    wait_for(lambda: count(ch, ours, p=settings.topic_prefix) == len(activities), what="activities stored")
    sink.loop.intake.recent = RecentIds(0)  # as after a restart: only the header tells the sink
    with Producer(settings) as producer:
        result = replay(client_runner(ch), producer, start, start + 1000)
    counts = result.sent
    assert result.refused == []
    replayed = sum(counts.values())
    assert counts["content_view"] >= len(views) and counts["sales_activity"] >= len(activities)
    wait_for(lambda: sink.loop.stats.duplicates == replayed, what="replayed records recognised")
    wait_for(
        lambda: sum(committed_offsets(settings).values()) == len(views) + len(activities) + replayed,
        what="all offsets committed",
    )
    sink.close()
    assert count(ch, by_content, c=content) == len(views)  # no FINAL: no second row
    assert count(ch, ours, p=settings.topic_prefix) == len(activities)
    usage = "SELECT sum(events) FROM leadpulse.content_usage_daily WHERE content_id = {c:String}"
    assert count(ch, usage, c=content) == len(views)
    on_topic = [
        item
        for item in read_topic(settings, settings.topic("events.content_views"), idle_ms=500)
        if isinstance(item, Decoded) and item.record["content_id"] == content
    ]
    assert len(on_topic) == 2 * len(views)  # the workers do get them again
    assert [is_replayed(item.headers) for item in on_topic].count(True) == len(views)


def test_offsets_are_not_committed_while_clickhouse_refuses_inserts(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    settings = broker_settings
    records = produce(settings, "download", 50, seed=3)
    faulty = FaultyClient(ch)
    faulty.fail_before = True
    sink = start_sink(faulty)
    wait_for(lambda: sink.loop.stats.failures >= 3, what="repeated insert failures")
    assert committed_offsets(settings) == {}
    assert topic_rows(ch, "events", settings) == 0
    assert sink.thread.is_alive()
    faulty.fail_before = False  # ClickHouse is back: the same batch goes in, then offsets move
    wait_for(lambda: topic_rows(ch, "events", settings) == len(records), what="rows after recovery")
    wait_for(lambda: sum(committed_offsets(settings).values()) == len(records), what="commit after recovery")
    sink.close()


def test_rows_clickhouse_rejects_and_undecodable_records_go_to_the_dlq(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    settings = broker_settings
    registry = default_registry()
    good = list(sample_events("content_view", 20, seed=4))
    bad = {**good[7], "event_id": f"{settings.topic_prefix}negative-dwell", "dwell_ms": -5}
    topic = settings.topic("events.content_views")
    with Producer(settings) as producer:
        for record in [*good[:7], bad, *good[8:]]:
            record = (
                {**record, "event_id": f"{settings.topic_prefix}{record['event_id']}"}
                if record is not bad
                else record
            )
            producer.send_encoded(topic, b"k", registry.encode("content_view", record))
        producer.send_encoded(topic, b"k", b"not avro at all")  # same key: same partition
    sink = start_sink(ch, BatchPolicy(10_000, 0.3))
    wait_for(
        lambda: topic_rows(ch, "events", settings) == 19 and sink.loop.stats.dead_lettered == 2,
        what="good rows stored and two dead letters",
    )
    wait_for(lambda: sum(committed_offsets(settings).values()) == 21, what="all offsets committed")
    sink.close()
    letters = []
    consumer = KafkaConsumer(
        settings.topic("dlq"),
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    writers = []
    for message in consumer:
        letters.append(registry.decode(message.value)[1])
        writers.append(writer_of(message.headers))
    consumer.close()
    assert writers == ["sink", "sink"]
    by_stage = {letter["stage"]: letter for letter in letters}
    assert set(by_stage) == {"decode", "sink"}
    assert by_stage["sink"]["event_id"] == bad["event_id"]  # read from the original bytes
    assert by_stage["sink"]["source_topic"] == topic and by_stage["sink"]["offset"] == 7
    assert "dwell_ms_not_negative" in by_stage["sink"]["error"]
    assert by_stage["decode"]["value"] == b"not avro at all" and by_stage["decode"]["offset"] == 20
    assert by_stage["decode"]["error_type"] == "WireFormatError"


def test_events_whose_ids_hold_control_characters_or_run_too_long_are_dead_lettered_not_stored(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    """From a producer that bypasses the collector and the SDK (raw Avro): the undecoded fast path reads
    the ids too, so a line break in a lead id never reaches ClickHouse rows or the notifier's headers."""
    settings = broker_settings
    registry = default_registry()
    good = [
        {**e, "event_id": f"{settings.topic_prefix}{e['event_id']}"}
        for e in sample_events("web_visit", 3, seed=9)
    ]
    crlf = {**good[0], "event_id": f"{settings.topic_prefix}crlf", "lead_id": "L-1\r\nX-Injected: 1"}
    long = {**good[1], "event_id": f"{settings.topic_prefix}long", "anonymous_id": "a" * 300, "lead_id": None}
    topic = settings.topic("events.web_visits")
    with Producer(settings) as producer:
        for record in [good[0], crlf, good[1], long, good[2]]:
            producer.send_encoded(topic, b"k", registry.encode("web_visit", record))
    sink = start_sink(ch, BatchPolicy(10_000, 0.3))
    wait_for(
        lambda: topic_rows(ch, "events", settings) == 3 and sink.loop.stats.dead_lettered == 2,
        what="three good rows stored and two dead letters",
    )
    sink.close()
    letters = [
        item.record
        for item in read_topic(settings, settings.topic("dlq"), idle_ms=800)
        if isinstance(item, Decoded) and item.record["source_topic"] == topic
    ]
    errors = {letter["offset"]: (letter["stage"], letter["error"]) for letter in letters}
    assert errors == {
        1: ("validate", f"{topic}[0]@1: lead_id: must not contain control characters ('\\r' at position 4)"),
        3: ("validate", f"{topic}[0]@3: anonymous_id: must be at most 256 characters, got 300"),
    }


def test_an_event_with_bytes_after_its_record_is_dead_lettered_not_shipped_to_clickhouse(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    """The fast path hands the body to ClickHouse with the origin fields appended: bytes after the record (a
    writer schema other than its fingerprint names) are read as those fields. Before, ClickHouse refused the
    batch ("Cannot have negative length"), and bisection isolated this record, which alone it accepted: a row
    with event_type 'spring', topic 'web_visit', partition 20 (seen on chDB 26.9), never dead-lettered."""
    settings = broker_settings
    registry = default_registry()
    good = [
        {**e, "event_id": f"{settings.topic_prefix}{e['event_id']}"}
        for e in sample_events("web_visit", 3, seed=12)
    ]
    values = [registry.encode("web_visit", record) for record in good]
    values[1] += b"\x0cspring"  # an extra string field's encoding
    topic = settings.topic("events.web_visits")
    with Producer(settings) as producer:
        for value in values:
            producer.send_encoded(topic, b"k", value)
    sink = start_sink(ch, BatchPolicy(10_000, 0.3))
    wait_for(
        lambda: topic_rows(ch, "events", settings) == 2 and sink.loop.stats.dead_lettered == 1,
        what="two good rows stored and one dead letter",
    )
    wait_for(lambda: sum(committed_offsets(settings).values()) == 3, what="all offsets committed")
    sink.close()
    stored = ch.query(
        "SELECT event_id, offset FROM leadpulse.events WHERE startsWith(topic, {p:String}) ORDER BY offset",
        parameters={"p": settings.topic_prefix},
    ).result_rows
    assert stored == [(good[0]["event_id"], 0), (good[2]["event_id"], 2)]
    [letter] = [
        item.record
        for item in read_topic(settings, settings.topic("dlq"), idle_ms=800)
        if isinstance(item, Decoded) and item.record["source_topic"] == topic
    ]
    assert (letter["stage"], letter["error_type"], letter["offset"]) == ("decode", "TrailingBytes", 1)
    assert letter["error"].startswith(f"{topic}[0]@1: 7 trailing bytes after the web_visit record")
    assert letter["value"] == values[1]


# --- the sink as a process, killed with SIGKILL mid-stream ---------------------------------------------
def _query(port: int, sql: str) -> list[list[Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/query",
        data=json.dumps({"sql": sql}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return list(json.loads(response.read())["rows"])


def _try_count(port: int, sql: str) -> int | None:
    try:
        return int(_query(port, sql)[0][0])
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _start_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "leadpulse.cli", "sink", "--batch-rows", "300", "--batch-seconds", "0.2"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_sink_killed_with_sigkill_and_restarted_stores_every_event_exactly_once(
    broker_settings: Settings, tmp_path: Path
) -> None:
    settings = broker_settings
    port = free_port()
    env = {
        **os.environ,
        "LEADPULSE_KAFKA_BOOTSTRAP": settings.bootstrap,
        "LEADPULSE_TOPIC_PREFIX": settings.topic_prefix,
        "LEADPULSE_DATA_DIR": str(tmp_path / "data"),
        "LEADPULSE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'sink-chdb'}",
        "LEADPULSE_SINK_PORT": str(port),
        "LEADPULSE_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "sink.log"
    total = 6000
    stored = "SELECT count() FROM leadpulse.events"

    killed = threading.Event()

    def publish() -> None:
        """Half the events paced while the first sink runs, the rest only after it was killed."""
        with Producer(settings) as producer:
            for i, record in enumerate(sample_events("web_visit", total, seed=5)):
                if i == total // 2:
                    killed.wait(60)
                producer.send("web_visit", record)
                if i % 200 == 199:
                    producer.flush()
                    time.sleep(0.05)

    publisher = threading.Thread(target=publish)
    proc = _start_process(env, log)
    try:
        wait_for(lambda: _try_count(port, stored) is not None, what=f"sink serving (log: {log})")
        publisher.start()
        wait_for(lambda: (_try_count(port, stored) or 0) >= 600, what=f"first rows (log: {log})")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed.set()
        publisher.join(60)
        committed_at_kill = sum(committed_offsets(settings).values())
        assert committed_at_kill < total, "the kill should land mid-stream"
        proc = _start_process(env, log)
        wait_for(
            lambda: _try_count(port, stored) == total, timeout=120, what=f"all rows after restart ({log})"
        )
        wait_for(lambda: sum(committed_offsets(settings).values()) == total, what="offsets committed")
        assert _try_count(port, "SELECT uniqExact(event_id) FROM leadpulse.events") == total
        assert _try_count(port, "SELECT count() FROM leadpulse.events FINAL") == total
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'leadpulse_sink_rows_total{table="events"}' in metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as response:
            assert json.loads(response.read())["ready"] is True
        # The query API is read-only.
        with pytest.raises(urllib.error.HTTPError):
            _query(port, "DROP TABLE leadpulse.events")
        with pytest.raises(urllib.error.HTTPError):
            _query(port, "SELECT 1; DROP TABLE leadpulse.events")
    finally:
        killed.set()
        if publisher.is_alive():
            publisher.join(60)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-2000:]


@pytest.mark.parametrize(
    ("old_offset", "seed"),
    [
        pytest.param(5_000, 5, id="new-log-ends-before-the-old-rows"),
        pytest.param(0, 6, id="new-log-already-longer-than-the-old-rows"),
    ],
)
def test_rows_stored_from_an_earlier_log_do_not_make_the_sink_skip_a_new_one(
    ch: Client,
    broker_settings: Settings,
    start_sink: Callable[..., RunningSink],
    old_offset: int,
    seed: int,
) -> None:
    """ClickHouse keeps rows of a log that is gone (the embedded broker restarted, counting offsets from 0
    again), and the new records are stored, not skipped. At offset 5 000 the new log ends before the old
    rows (its high watermark tells); at offset 0 it has already grown past them before the sink starts (the
    record now at that offset, another event id, tells)."""
    settings = broker_settings
    topic = settings.topic("events.web_visits")
    old = [
        {**r, "event_id": f"{settings.topic_prefix}old-{old_offset}-{i}"}
        for i, r in enumerate(sample_events("web_visit", 8))
    ]
    for partition in range(8):
        spec, row = to_row("web_visit", old[partition], Origin(topic, partition, old_offset), b"key")
        ch.insert(spec.qualified, [row], column_names=list(spec.insert_columns))
    records = produce(settings, "web_visit", 40, seed=seed)
    sink = start_sink(ch)
    wait_for(lambda: topic_rows(ch, "events", settings) >= len(old) + len(records), what="new events stored")
    sink.close()
    stored = {
        row[0]
        for row in ch.query(
            "SELECT event_id FROM leadpulse.events WHERE topic = {t:String}", parameters={"t": topic}
        ).result_rows
    }
    assert {r["event_id"] for r in records} <= stored


class LagHooks(SinkHooks):
    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], int] = {}
        self.groups: set[str] = set()

    def lags(self, group: str, lags: dict[tuple[str, int], int]) -> None:
        self.seen.update(lags)
        self.groups.add(group)


def test_lag_after_a_restart_counts_from_the_groups_commits_not_from_zero(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    """A restarted sink reported every partition with nothing new as lagging by its whole length (the lag
    counted from 0 until the partition's first commit in this process): a false LeadpulseSinkStalled."""
    settings = broker_settings
    first = produce(settings, "web_visit", 40, seed=7)
    sink = start_sink(ch)
    wait_for(lambda: topic_rows(ch, "events", settings) >= len(first), what="first events stored")
    time.sleep(1)  # the commit after the insert
    sink.close()
    hooks = LagHooks()
    loop = ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(500, 0.2), hooks=hooks)
    again = RunningSink(loop)
    try:
        wait_for(lambda: bool(loop.stats.assigned), what="partitions assigned")
        produce(settings, "web_visit", 1, seed=8)  # one new record: one commit, then a lag report
        wait_for(lambda: topic_rows(ch, "events", settings) >= len(first) + 1, what="the new event stored")
        wait_for(
            lambda: sum(topic == "events.web_visits" for topic, _ in hooks.seen) == 8, what="lag reported"
        )
    finally:
        again.close()
    visits = {p: lag for (topic, p), lag in hooks.seen.items() if topic == "events.web_visits"}
    assert len(visits) == 8, hooks.seen
    assert visits == dict.fromkeys(range(8), 0), visits
    # the catalogue name, not the prefixed group id: the alerts match group="leadpulse-sink"
    assert settings.topic_prefix and hooks.groups == {"leadpulse-sink"}


def test_lag_is_reported_while_clickhouse_refuses_inserts(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    """The lag was reported only after a commit, and nothing is committed while inserts fail: during a
    ClickHouse outage the gauge stayed at its last value (none at all for a sink that never stored a batch),
    so LeadpulseSinkStalled and LeadpulseConsumerLagGrowing could not fire (ops audit). It is now reported
    every few seconds whatever the inserts do."""
    settings = broker_settings
    records = produce(settings, "download", 50, seed=5)
    faulty = FaultyClient(ch)
    faulty.fail_before = True
    hooks = LagHooks()
    loop = ClickHouseSinkLoop(settings, faulty, policy=BatchPolicy(500, 0.2), hooks=hooks)
    sink = RunningSink(loop)
    try:
        wait_for(lambda: loop.stats.failures >= 1, what="a failed insert")
        wait_for(
            lambda: (
                sum(lag for (topic, _), lag in hooks.seen.items() if topic == "events.downloads")
                == len(records)
            ),
            timeout=20,
            what=f"a lag of {len(records)} reported with nothing stored",
        )
        assert committed_offsets(settings) == {}
    finally:
        sink.close()


def test_lag_grows_with_records_produced_while_the_sink_backs_off(
    ch: Client, broker_settings: Settings, start_sink: Callable[..., RunningSink]
) -> None:
    """While inserts fail the sink's partitions are paused, and a paused partition's fetch high watermark
    stops moving: the gauge kept the lag of the pause's start, so LeadpulseConsumerLagGrowing could not see
    a ClickHouse outage's backlog grow. The lag now counts the broker's end offsets of paused partitions.
    One record per send, so each is its own batch and Tansu's ListOffsets answer is exact (DESIGN §11)."""
    settings = broker_settings
    records = produce(settings, "download", 20, seed=11)
    faulty = FaultyClient(ch)
    faulty.fail_before = True
    hooks = LagHooks()
    loop = ClickHouseSinkLoop(settings, faulty, policy=BatchPolicy(500, 0.2), hooks=hooks)
    sink = RunningSink(loop)

    def lag() -> int:
        return sum(lag for (topic, _), lag in hooks.seen.items() if topic == "events.downloads")

    try:
        wait_for(lambda: loop.stats.failures >= 1 and lag() == len(records), timeout=20, what="first lag")
        later = [r for seed in range(100, 105) for r in produce(settings, "download", 1, seed=seed)]
        wait_for(
            lambda: lag() == len(records) + len(later),
            timeout=20,
            what=f"a lag of {len(records) + len(later)} while paused (saw {lag()})",
        )
        assert committed_offsets(settings) == {}
    finally:
        sink.close()


class HeldClient(FaultyClient):
    """A real client whose first insert waits until ``release`` is set (a slow ClickHouse)."""

    def __init__(self, real: Client) -> None:
        super().__init__(real)
        self.entered = threading.Event()
        self.release = threading.Event()

    def _faulty(self, insert: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.insert_calls == 0:
            self.entered.set()
            self.release.wait(60)
        return super()._faulty(insert, *args, **kwargs)


class InsertHooks(SinkHooks):
    def __init__(self) -> None:
        self.rows: list[int] = []

    def inserted(self, table: str, rows: int, seconds: float, failure: str | None) -> None:
        if failure is None:
            self.rows.append(rows)


def test_newer_records_are_taken_into_a_fresh_batch_while_an_insert_is_in_flight(
    ch: Client, broker_settings: Settings
) -> None:
    """The loop waited for each insert before it fetched again (insert wait, fetching and taking one after
    the other: docs/clickhouse.md, stop 22). It now takes newer records into a fresh batch while a batch is
    inserted; the batch in flight keeps every offset out of the commits until it is stored, and the batches
    are stored in the order they were cut."""
    settings = broker_settings
    first = produce(settings, "download", 30, seed=21)
    held = HeldClient(ch)
    hooks = InsertHooks()
    # Batches fall due by rows only: the first at its 30th record, the fresh one at the last of the later 30,
    # so the loop takes every later record before it waits for the held insert, however the fetches split
    # them (with a time bound, a fresh batch due early made the loop wait before it had taken them all).
    loop = ClickHouseSinkLoop(settings, held, policy=BatchPolicy(30, 600.0), hooks=hooks)
    sink = RunningSink(loop)
    try:
        assert held.entered.wait(30), "no insert started"
        later = produce(settings, "download", 30, seed=22)
        total = len(first) + len(later)
        wait_for(
            lambda: loop.stats.consumed == total, timeout=20, what="newer records taken during the insert"
        )
        # the later records wait in a fresh batch behind the held insert of the first ones
        assert sum(batch.size for batch in loop.sink.batches.values()) == len(later)
        time.sleep(0.5)  # a few more steps: the newer batch is due, nothing may be committed yet
        assert committed_offsets(settings) == {}
        assert topic_rows(ch, "events", settings) == 0
        held.release.set()
        wait_for(lambda: topic_rows(ch, "events", settings) == total, what="both batches stored")
        wait_for(lambda: sum(committed_offsets(settings).values()) == total, timeout=20, what="all committed")
        assert hooks.rows == [len(first), len(later)]  # the held batch stored first
    finally:
        held.release.set()
        sink.close()


class _Logged(logging.Handler):
    """Sets ``seen`` when a record of the sink loop's logger contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.INFO)
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def waiting() -> Iterator[_Logged]:
    """Whether the sink loop logged that a rebalance waits for its insert in flight."""
    sink_log = logging.getLogger("sinks.sink_loop")
    logged = _Logged("waiting for the insert in flight")
    level = sink_log.level
    sink_log.setLevel(logging.INFO)
    sink_log.addHandler(logged)
    try:
        yield logged
    finally:
        sink_log.removeHandler(logged)
        sink_log.setLevel(level)


def test_partitions_revoked_during_an_insert_are_given_up_once_it_ended_so_nothing_is_stored_twice(
    ch: Client, clickhouse_dsn: str, broker_settings: Settings, waiting: _Logged
) -> None:
    """A second sink joins the group while the first one's insert is in flight. The first sink gave its
    partitions up at once (its rebalance callback only noted them), so the second one read the stored
    positions before that insert landed and stored the same records again, in other batches with other
    dedup tokens: two raw rows each (and the daily views counted them twice). Revoked partitions are now
    given up only once the insert in flight has ended."""
    settings = broker_settings
    produced = produce(settings, "download", 40, seed=24)
    held = HeldClient(ch)
    other = clickhouse_connect.get_client(dsn=clickhouse_dsn)  # a second handle on the same engine
    first = RunningSink(ClickHouseSinkLoop(settings, held, policy=BatchPolicy(500, 0.2)))
    second: RunningSink | None = None
    try:
        assert held.entered.wait(30), "no insert started"
        second = RunningSink(ClickHouseSinkLoop(settings, other, policy=BatchPolicy(500, 0.2)))
        joined = second.loop
        # Before the fix the second sink got partitions and stored their records during the held insert.
        wait_for(lambda: waiting.seen.is_set() or bool(joined.stats.inserted), timeout=40, what="a rebalance")
        time.sleep(1.0)
        held.release.set()
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == len(produced),
            timeout=60,
            what="every record committed by one of the two sinks",
        )
        assert count(
            ch,
            "SELECT count() FROM leadpulse.events FINAL WHERE startsWith(topic, {p:String})",
            p=settings.topic_prefix,
        ) == len(produced)
        assert topic_rows(ch, "events", settings) == len(produced), "records stored twice"
    finally:
        held.release.set()
        if second is not None:
            second.close()
        first.close()
        other.close()


def test_an_insert_in_flight_when_the_loop_fails_is_awaited_before_the_consumer_closes(
    ch: Client, broker_settings: Settings
) -> None:
    """The loop's ``finally`` closed the consumer (leaving the group) while the insert it had started was
    still running in its thread, and nobody looked at its result. It is now awaited, then handled."""
    settings = broker_settings
    produced = produce(settings, "download", 20, seed=25)
    held = HeldClient(ch)
    loop = ClickHouseSinkLoop(settings, held, policy=BatchPolicy(500, 0.2))
    failed = threading.Event()
    errors: list[BaseException] = []
    stop = threading.Event()

    async def broken(*args: Any, **kwargs: Any) -> None:
        failed.set()
        raise RuntimeError("injected: a step failed")

    def run() -> None:
        try:
            loop.run(stop)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert held.entered.wait(30), "no insert started"
        loop.lag.report_due = broken  # type: ignore[method-assign]  # the next step fails
        assert failed.wait(10), "no step after the insert started"
        time.sleep(1.0)
        assert loop.consumer is not None
        assert loop.consumer._closed is False, "consumer closed while the insert was in flight"
        held.release.set()
        thread.join(30)
        assert not thread.is_alive(), "sink loop did not stop"
        assert [str(e) for e in errors] == ["injected: a step failed"]
        assert loop.writing is None
        assert loop.stats.inserted == {"events": len(produced)}  # the insert's result was handled
        assert topic_rows(ch, "events", settings) == len(produced)
    finally:
        held.release.set()
        stop.set()
        thread.join(30)


def test_partitions_revoked_while_the_loop_awaits_its_insert_are_given_up_once_it_ended(
    ch: Client, clickhouse_dsn: str, broker_settings: Settings, waiting: _Logged
) -> None:
    """As above, but the loop itself is waiting for the insert when the rebalance comes (the next batch fell
    due behind it, the usual case under load). ``_finish_write`` cleared ``writing`` before it awaited the
    insert, so the rebalance callback saw no insert in flight and gave the partitions up at once: the second
    sink read the stored positions before the held insert landed and stored the same records again."""
    settings = broker_settings
    first_records = produce(settings, "download", 30, seed=26)
    held = HeldClient(ch)
    other = clickhouse_connect.get_client(dsn=clickhouse_dsn)  # a second handle on the same engine
    # Due by rows only: the first 30 records make the held batch, the next 30 a batch due behind it.
    loop = ClickHouseSinkLoop(settings, held, policy=BatchPolicy(30, 600.0))
    first = RunningSink(loop)
    second: RunningSink | None = None
    try:
        assert held.entered.wait(30), "no insert started"
        later = produce(settings, "download", 30, seed=27)
        total = len(first_records) + len(later)
        wait_for(lambda: loop.stats.consumed == total, timeout=20, what="the later records taken")
        time.sleep(0.5)  # the later batch is due: the loop now waits for the held insert
        second = RunningSink(ClickHouseSinkLoop(settings, other, policy=BatchPolicy(500, 0.2)))
        joined = second.loop
        wait_for(lambda: waiting.seen.is_set() or bool(joined.stats.inserted), timeout=40, what="a rebalance")
        time.sleep(1.0)
        loop.sink.policy = BatchPolicy(500, 0.2)  # what the first sink re-reads after the rebalance is stored
        held.release.set()
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == total,
            timeout=60,
            what="every record committed by one of the two sinks",
        )
        assert topic_rows(ch, "events", settings) == total, "records stored twice"
    finally:
        held.release.set()
        if second is not None:
            second.close()
        first.close()
        other.close()


def send_visits(settings: Settings, now: int, *leads: str) -> None:
    """Three pricing-page visits of each lead."""
    with Producer(settings) as producer:
        for lead in leads:
            for n in range(3):
                producer.send(
                    "web_visit",
                    {"event_id": f"{lead}-v{n}", "event_time": now - n, "lead_id": lead, "source": "web",
                     "url": "https://x.example/pricing", "page_category": "pricing"},
                )  # fmt: skip


def forget_with_a_server(ch: Client, settings: Settings, lead: str, now: int) -> dict[str, Any]:
    """What `leadpulse forget` does with a ClickHouse server: log the erasure, then delete."""
    record = erasure_record(lead, [], now)
    publish_erasure(settings, record)
    apply_erasure(ch, record, applied_by="cli")
    return record


def held_then_forgotten(
    ch: Client, settings: Settings, loop: ClickHouseSinkLoop, gone: str, stays: str, now: int
) -> dict[str, Any]:
    """Both leads' visits taken into the running sink's batch, not stored, then ``gone`` forgotten."""
    wait_for(lambda: bool(loop.stats.assigned), timeout=30, what="partitions assigned")
    send_visits(settings, now, gone, stays)
    wait_for(lambda: loop.stats.consumed >= 6, timeout=30, what="the visits taken into a batch")
    assert topic_rows(ch, "events", settings) == 0, "stored before the forget: the race is not staged"
    return forget_with_a_server(ch, settings, gone, now)


def only_the_forgotten_lead_erased(ch: Client, record: dict[str, Any], stays: str, when: str) -> None:
    left = remaining_rows(client_runner(ch), record)
    assert not any(left.values()), f"rows of the forgotten lead {when}: {left}"
    kept = count(ch, "SELECT count() FROM leadpulse.events WHERE lead_id = {l:String}", l=stays)
    assert kept == 3


def test_with_a_server_rows_the_sink_held_as_a_lead_was_forgotten_are_deleted_once_stored(
    ch: Client, broker_settings: Settings
) -> None:
    """With a ClickHouse server, ``forget`` logs the erasure and deletes on the server itself. Rows of the
    lead the sink had already taken into a batch were inserted after that delete and stayed, with the
    erasure recorded as done (privacy review). Now the sink, once its tail has the erasure, stores what it
    holds and deletes what is stored of the lead; other leads' rows stay."""
    settings = broker_settings
    loop = ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(10_000, 5.0))
    loop.apply_erasures = False  # as with an http:// DSN: this process does not own the engine
    running = RunningSink(loop)
    now = int(time.time() * 1000)
    gone, stays = f"{settings.topic_prefix}L-forgotten", f"{settings.topic_prefix}L-kept"
    try:
        record = held_then_forgotten(ch, settings, loop, gone, stays, now)
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == 6, timeout=60, what="every visit committed"
        )
    finally:
        running.close()
    only_the_forgotten_lead_erased(ch, record, stays, "stored after the forget")


def test_with_a_server_rows_held_when_the_sink_stops_just_after_an_erasure_arrived_are_deleted_once_stored(
    ch: Client, broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race at a stop: the erasure reaches the sink's tail after its last step looked for new
    erasures, and the stop stores what the sink holds (``drain``), rows of the forgotten lead included,
    after forget's delete. The next process reads that erasure at its start and does not sweep it, so the
    rows stayed for good. Staged: the steps do not see the erasure (as if it arrived after the last one)."""
    settings = broker_settings
    loop = ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(10_000, 60.0))
    loop.apply_erasures = False  # as with an http:// DSN: this process does not own the engine
    draining = threading.Event()
    drain_new = ErasureLog.drain_new

    def seen_only_at_the_stop(self: ErasureLog) -> list[dict[str, Any]]:
        return drain_new(self) if draining.is_set() else []

    monkeypatch.setattr(ErasureLog, "drain_new", seen_only_at_the_stop)
    original_drain = loop.drain

    async def drain() -> None:
        draining.set()
        await original_drain()

    monkeypatch.setattr(loop, "drain", drain)
    running = RunningSink(loop)
    now = int(time.time() * 1000)
    gone, stays = f"{settings.topic_prefix}L-stopped", f"{settings.topic_prefix}L-kept"
    try:
        record = held_then_forgotten(ch, settings, loop, gone, stays, now)
        wait_for(
            lambda: loop.erasures is not None and loop.erasures.is_erased(gone), what="the erasure tailed"
        )
    finally:
        running.close()
    assert topic_rows(ch, "events", settings) > 0, "nothing stored at the stop: the race is not staged"
    only_the_forgotten_lead_erased(ch, record, stays, "stored at the stop, after the forget")


class Statements:
    """A real client running ``before(sql)`` before each statement (``command``), ``after(sql)`` after."""

    def __init__(
        self,
        real: Client,
        before: Callable[[str], None] = lambda _: None,
        after: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.real, self.before, self.after = real, before, after

    def command(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        self.before(sql)
        result = self.real.command(sql, *args, **kwargs)
        self.after(sql)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_with_a_server_the_sink_does_not_erase_alongside_forget_so_the_daily_views_are_not_doubled(
    ch: Client, broker_settings: Settings
) -> None:
    """With a ClickHouse server ``forget`` logs the erasure, then deletes: it rebuilds the daily-view keys
    the lead fed (delete the keys, insert them again from the other leads' rows), then deletes the base
    rows. A sink seeing the erasure meanwhile found the lead's base rows still stored and ran the same
    erasure alongside: both deleted the keys before either inserted them again, so the other leads' counts
    were inserted twice (``content_usage_daily`` sums them: doubled). Staged: forget's re-insert waits (at
    most 10 s) until the sink has deleted the keys too; the sink must wait for forget's erasure instead."""
    settings = broker_settings
    sink_deleted_keys = threading.Event()

    def sink_after(sql: str) -> None:
        if sql.startswith("ALTER TABLE leadpulse.content_usage_daily DELETE"):
            sink_deleted_keys.set()

    def cli_before(sql: str) -> None:
        if sql.startswith("INSERT INTO leadpulse.content_usage_daily"):
            sink_deleted_keys.wait(10)

    loop = ClickHouseSinkLoop(settings, Statements(ch, after=sink_after), policy=BatchPolicy(500, 0.2))
    loop.apply_erasures = False  # as with an http:// DSN: this process does not own the engine
    running = RunningSink(loop)
    now = int(time.time() * 1000)
    content = f"{settings.topic_prefix}wp"
    gone, stays = f"{settings.topic_prefix}L-forgotten", f"{settings.topic_prefix}L-kept"
    try:
        wait_for(lambda: bool(loop.stats.assigned), timeout=30, what="partitions assigned")
        with Producer(settings) as producer:
            for lead in (gone, stays):
                for n in range(3):
                    producer.send(
                        "content_view",
                        {"event_id": f"{lead}-c{n}", "event_time": now - n, "lead_id": lead, "source": "web",
                         "content_id": content, "content_type": "whitepaper", "dwell_ms": 1000,
                         "percent_viewed": 50.0},
                    )  # fmt: skip
        wait_for(lambda: topic_rows(ch, "events", settings) == 6, what="the views stored")
        record = erasure_record(gone, [], now)
        publish_erasure(settings, record)  # what `leadpulse forget` does with a server: log, then delete
        apply_erasure(Statements(ch, before=cli_before), record, applied_by="cli")  # type: ignore[arg-type]
        time.sleep(2.0)  # a sink erasing alongside would have finished by now
    finally:
        running.close()
    usage = "SELECT sum(events) FROM leadpulse.content_usage_daily WHERE content_id = {c:String}"
    assert count(ch, usage, c=content) == 3, "the other lead's views counted twice in content_usage_daily"
    assert not any(remaining_rows(client_runner(ch), record).values())


def test_partitions_assigned_during_a_back_off_lose_no_record(
    ch: Client, clickhouse_dsn: str, broker_settings: Settings
) -> None:
    """A back-off with no batch of its own to re-send (ClickHouse refused an erasure's deletion) outlives a
    rebalance: no batch of a revoked partition was dropped, so nothing ended it. The partitions assigned
    then were not paused (aiokafka's new assignment starts unpaused), and the back-off's fetch threw away
    what it returned for them; the loop went on from after those records and later committed past them."""
    settings = broker_settings
    loop = ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(500, 0.2))
    armed = threading.Event()
    real = loop._apply_erasures

    async def refused() -> None:
        if armed.is_set():
            armed.clear()
            raise SinkBackpressure("erasures", 12.0, OperationalError("injected: ClickHouse busy"))
        await real()

    loop._apply_erasures = refused  # type: ignore[method-assign]
    first = RunningSink(loop)
    second: RunningSink | None = None
    try:
        wait_for(lambda: bool(loop.stats.assigned), timeout=30, what="the first sink's partitions")
        armed.set()
        wait_for(lambda: loop.retry_at is not None, timeout=10, what="the back-off")
        second = RunningSink(ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(500, 0.2)))
        joined = second.loop
        wait_for(
            lambda: bool(joined.stats.assigned) and len(loop.stats.assigned) < 2 * len(joined.stats.assigned),
            timeout=30,
            what="the partitions shared",
        )
        assert loop.retry_at is not None and loop.retry_at > time.monotonic() + 2, "back-off ended too soon"
        produced = produce(settings, "download", 40, seed=28)  # every partition: the first sink has some
        wait_for(lambda: loop.retry_at is None, timeout=30, what="the back-off's end")
        produced += produce(settings, "download", 40, seed=29)
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == len(produced),
            timeout=60,
            what="every record committed",
        )
        assert topic_rows(ch, "events", settings) == len(produced), "records committed but not stored"
    finally:
        if second is not None:
            second.close()
        first.close()


def test_a_rebalance_noted_as_a_back_off_ends_is_applied_not_spun_on(
    ch: Client, broker_settings: Settings
) -> None:
    """When a back-off's wait is over, the step re-sends the failed batch without fetching, and only a fetch
    applied a rebalance. A revocation the callback noted just then (here: while the lag report awaited the
    broker's end offsets, as it does every 5 s while partitions are paused) made ``_flush`` hold the re-send
    (its partitions may have a new owner) and nothing ever applied it: the loop went round without fetching,
    applying or re-sending, for good. The revocation is now applied first."""
    settings = broker_settings
    produced = produce(settings, "download", 20, seed=30)
    faulty = FaultyClient(ch)
    faulty.fail_before = True
    loop = ClickHouseSinkLoop(settings, faulty, policy=BatchPolicy(500, 0.2))
    real_report_due = loop.lag.report_due
    armed, held, noted = threading.Event(), threading.Event(), threading.Event()

    async def slow_report(consumer: Any, committed: dict[tuple[str, int], int]) -> None:
        if (
            armed.is_set()
            and loop.writing is None
            and loop.sink.closed
            and loop.retry_at is not None
            and loop.retry_at <= time.monotonic()
        ):
            armed.clear()
            held.set()
            while not loop._listener.revoked:  # a slow answer: the rebalance's revocation lands meanwhile
                await asyncio.sleep(0.05)
            noted.set()
        await real_report_due(consumer, committed)

    loop.lag.report_due = slow_report  # type: ignore[method-assign]
    first = RunningSink(loop)
    second: RunningSink | None = None
    try:
        wait_for(lambda: loop.stats.failures >= 1, timeout=30, what="a failed insert")
        faulty.fail_before = False  # ClickHouse is back: the re-send would succeed
        armed.set()
        assert held.wait(30), "the back-off's end not reached"
        second = RunningSink(ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(500, 0.2)))
        assert noted.wait(30), "no revocation"
        wait_for(lambda: not loop._listener.revoked, timeout=30, what="the revocation applied")
        wait_for(lambda: loop.retry_at is None, timeout=30, what="the back-off ended")
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == len(produced),
            timeout=60,
            what="every record committed",
        )
        assert topic_rows(ch, "events", settings) == len(produced)
    finally:
        if second is not None:
            second.close()
        first.close()


def poisoned_partition(
    settings: Settings, n: int, seed: int, poison: dict[int, bytes]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """``n`` sample content views with this test's ids and the ``poison`` values (offset: bytes) among
    them, sent under one key: one partition of the content-views topic, at offsets 0.. in order. Returns
    the valid records and every value sent (``values[offset]``)."""
    registry = default_registry()
    good = [
        {**e, "event_id": f"{settings.topic_prefix}{e['event_id']}"}
        for e in sample_events("content_view", n, seed=seed)
    ]
    values = [registry.encode("content_view", e) for e in good]
    for offset, value in sorted(poison.items()):
        values.insert(offset, value)
    with Producer(settings) as producer:
        for value in values:
            producer.send_encoded(settings.topic("events.content_views"), b"k", value)
    return good, values


def dead_letters_of(settings: Settings) -> list[dict[str, Any]]:
    """Every dead letter on this test's DLQ topic, decoded, in the order written."""
    registry = default_registry()
    return [
        registry.decode(message.value)[1]
        for message in KafkaConsumer(
            settings.topic("dlq"),
            bootstrap_servers=settings.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            consumer_timeout_ms=3000,
        )
    ]


class FlakyDeadLetterProducer:
    """The sink's DLQ producer while the broker does not take dead letters: the first send finds no broker
    (``DeliveryError`` at once, as kafka-python's metadata wait ends), the second is sent but never
    acknowledged (its future fails and the next flush says so). Later sends go to the real broker."""

    def __init__(self, settings: Settings) -> None:
        self.real = Producer(settings)
        self.sends = 0
        self.failed: list[tuple[str, str | None, str]] = []

    def send_encoded(self, topic: str, key: bytes | None, value: bytes, **kwargs: Any) -> Any:
        self.sends += 1
        if self.sends == 1:
            raise DeliveryError([(topic, None, "KafkaTimeoutError: injected, no broker")])
        if self.sends == 2:
            future = Future()
            future.failure(KafkaTimeoutError("injected: never acknowledged"))
            self.failed.append((topic, None, "KafkaTimeoutError: injected"))
            return future
        return self.real.send_encoded(topic, key, value, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        self.real.flush(timeout)
        failed, self.failed = self.failed, []
        if failed:
            raise DeliveryError(failed)

    def close(self, timeout: float | None = None) -> None:
        self.real.close(timeout)


def test_dead_letters_the_broker_does_not_take_hold_the_commit_and_are_sent_again(
    ch: Client, broker_settings: Settings
) -> None:
    """A dead letter sent while no broker answered raised out of the loop and ended the sink; one sent but
    never acknowledged was not looked at again. Now the sink keeps both, backs off and commits nothing past
    them until each is acknowledged: every poison record has exactly one letter and every offset is
    committed once they are."""
    settings = broker_settings
    good, values = poisoned_partition(settings, 10, seed=31, poison={3: b"poison one", 6: b"poison two"})
    loop = ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(10_000, 0.3))
    loop.dead_letters._producer = FlakyDeadLetterProducer(settings)
    sink = RunningSink(loop)
    try:
        wait_for(lambda: loop.stats.failures >= 1, timeout=30, what="the dead letters' back-off")
        assert sum(committed_offsets(settings).values()) <= 3, "committed past a letter not acknowledged"
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == len(values), what="every offset committed"
        )
        assert sink.thread.is_alive()
    finally:
        sink.close()
    assert topic_rows(ch, "events", settings) == len(good)
    letters = dead_letters_of(settings)
    assert sorted((letter["offset"], letter["value"]) for letter in letters) == [
        (3, b"poison one"),
        (6, b"poison two"),
    ]


class UnacknowledgedDeadLetterProducer:
    """The sink's DLQ producer while the broker never acknowledges a dead letter: every send comes back
    failed and every flush says so, so the sink keeps the letter and backs off, committing nothing past it."""

    def __init__(self) -> None:
        self.sends = 0

    def send_encoded(self, topic: str, key: bytes | None, value: bytes, **kwargs: Any) -> Any:
        self.sends += 1
        future = Future()
        future.failure(KafkaTimeoutError("injected: never acknowledged"))
        return future

    def flush(self, timeout: float | None = None) -> None:
        raise DeliveryError([("dlq", None, "KafkaTimeoutError: injected, never acknowledged")])

    def close(self, timeout: float | None = None) -> None:
        pass


def test_a_sink_gone_with_a_dead_letter_unsent_dead_letters_it_on_restart_despite_later_stored_rows(
    ch: Client, broker_settings: Settings
) -> None:
    """A sink that ended while a poison record's dead letter was unacknowledged had already stored the
    partition's later records; the commit stayed below the poison record. The restarted sink skipped
    through the highest stored offset, past the poison record: neither stored nor dead-lettered, lost
    without a word. Now only offsets actually stored are skipped: the record in the gap is dead-lettered
    again, and the records around it stay stored once."""
    settings = broker_settings
    topic = settings.topic("events.content_views")
    good, values = poisoned_partition(settings, 10, seed=37, poison={3: b"poison"})  # offsets 0..10
    first = ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(10_000, 0.3))
    dlq = UnacknowledgedDeadLetterProducer()
    first.dead_letters._producer = dlq
    sink = RunningSink(first)
    try:
        wait_for(lambda: topic_rows(ch, "events", settings) == len(good), what="the valid records stored")
        wait_for(lambda: first.stats.failures >= 1 and dlq.sends >= 2, what="the dead letter sent again")
        assert all(offset <= 3 for offset in committed_offsets(settings).values()), (
            "committed past the letter"
        )
    finally:
        # Models the process dying now: the letter is still unacknowledged (this DLQ producer never takes
        # it, also not in the stop's last flush), the later rows are stored and the commit stays below the
        # poison record: the state a SIGKILL leaves. (A stop leaves the group at once, so the next sink is
        # assigned the partition without waiting out the session.)
        sink.close()
    assert all(offset <= 3 for offset in committed_offsets(settings).values()), "committed past the letter"
    second = RunningSink(ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(10_000, 0.3)))
    try:
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == len(values), what="every offset committed"
        )
    finally:
        second.close()
    [(committed_tp, _)] = committed_offsets(settings).items()
    found = [
        (letter["source_topic"], letter["partition"], letter["offset"], letter["value"])
        for letter in dead_letters_of(settings)
    ]
    assert found == [(topic, committed_tp[1], 3, b"poison")], "the poison record's letter"
    assert topic_rows(ch, "events", settings) == len(good)  # raw rows: nothing stored twice
    final = "SELECT count() FROM leadpulse.events FINAL WHERE startsWith(topic, {p:String})"
    assert count(ch, final, p=settings.topic_prefix) == len(good)
    ids = "SELECT uniqExact(event_id) FROM leadpulse.events WHERE startsWith(topic, {p:String})"
    assert count(ch, ids, p=settings.topic_prefix) == len(good)


def test_a_re_send_of_a_corrected_copy_skipped_as_stored_beside_its_refused_copy_in_a_gap_is_not_stored(
    ch: Client, broker_settings: Settings
) -> None:
    """A refused copy and its corrected re-send in one batch: the corrected one is stored, the refused
    one's dead letter is never acknowledged and the sink goes, its commit below the refused copy. The next
    sink takes the refused copy again (it lies in a gap) and skips the corrected one as stored, remembering
    its id; but the id was already remembered at the refused copy, still unwritten, and refusing that copy
    forgot the id: a later re-send of the corrected copy was stored a second time (two raw rows, counted
    twice by the daily views)."""
    settings = broker_settings
    registry = default_registry()
    topic = settings.topic("events.content_views")
    content = f"{settings.topic_prefix}gap-corrected-item"
    events = [
        {**e, "event_id": f"{settings.topic_prefix}{e['event_id']}", "content_id": content}
        for e in sample_events("content_view", 3, seed=41)
    ]
    good = events[1]
    refused = {**good, "dwell_ms": -5}  # ClickHouse's CHECK refuses it
    values = [registry.encode("content_view", e) for e in (events[0], refused, good, events[2])]
    with Producer(settings) as producer:  # one key: one partition, offsets 0..3, the refused copy at 1
        for value in values:
            producer.send_encoded(topic, b"k", value)
    first = ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(10_000, 0.3))
    dlq = UnacknowledgedDeadLetterProducer()
    first.dead_letters._producer = dlq
    sink = RunningSink(first)
    try:
        wait_for(lambda: topic_rows(ch, "events", settings) == 3, what="the valid records stored")
        wait_for(lambda: first.stats.failures >= 1 and dlq.sends >= 2, what="the dead letter sent again")
    finally:
        sink.close()  # gone with the letter unacknowledged: the commit stays below the refused copy
    assert all(offset <= 1 for offset in committed_offsets(settings).values()), "committed past the letter"
    second = RunningSink(ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(10_000, 0.3)))
    try:
        wait_for(lambda: sum(committed_offsets(settings).values()) == 4, what="the re-read handled")
        assert second.loop.stats.dead_lettered == 1  # the refused copy, taken again from its gap
        with Producer(settings) as producer:  # the client re-sends the corrected copy
            producer.send_encoded(topic, b"k", registry.encode("content_view", good))
        wait_for(lambda: sum(committed_offsets(settings).values()) == 5, what="the re-send handled")
    finally:
        second.close()
    assert second.loop.stats.duplicates == 1
    by_id = "SELECT count() FROM leadpulse.events WHERE event_id = {e:String}"  # no FINAL: raw rows
    assert count(ch, by_id, e=good["event_id"]) == 1
    usage = "SELECT sum(events) FROM leadpulse.content_usage_daily WHERE content_id = {c:String}"
    assert count(ch, usage, c=content) == 3


def test_a_sink_that_cannot_read_its_committed_offsets_stores_nothing_twice_however_many_gaps_lie_below(
    ch: Client, broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between insert and commit leaves rows above the committed offset; the restarted sink skips
    them. When the group coordinator did not answer its read of the committed offsets at assignment, the
    gaps among the stored offsets were listed from offset 0: more than the listing keeps (here 3 poison
    records below the commit against a limit of 2, standing in for ``MAX_GAPS``, 20,000) and skipping ended
    at the first unlisted gap, below the committed offset, so every stored record above it was stored
    again. Now the gaps are listed from the first offset the sink fetches (its committed offset), and the
    stored records above it are skipped."""
    settings = broker_settings
    registry = default_registry()
    topic = settings.topic("events.content_views")
    content = f"{settings.topic_prefix}silent-coordinator-item"
    good = [
        {**e, "event_id": f"{settings.topic_prefix}{e['event_id']}", "content_id": content}
        for e in sample_events("content_view", 8, seed=39)
    ]
    values = [registry.encode("content_view", e) for e in good]
    before, after = values[:5], values[5:]
    for at in (1, 3, 5):
        before.insert(at, b"poison")  # offsets 0..7: poison at 1, 3 and 5, dead-lettered, so no row there
    with Producer(settings) as producer:
        for value in before:
            producer.send_encoded(topic, b"k", value)
    first = ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(10_000, 0.3))
    sink = RunningSink(first)
    try:
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == len(before), what="first part committed"
        )

        async def dies_before_committing() -> None:
            """From here on the sink stores but never commits: the state a crash between the two leaves."""

        monkeypatch.setattr(first, "_commit", dies_before_committing)
        # Offsets 8..10 in two inserts: re-read as one batch they carry another dedup token, so ClickHouse
        # itself would not drop a second insert of them.
        stored = len(good) - len(after)
        for part in (after[:1], after[1:]):
            with Producer(settings) as producer:
                for value in part:
                    producer.send_encoded(topic, b"k", value)
            stored += len(part)
            wait_for(lambda n=stored: topic_rows(ch, "events", settings) == n, what="later records stored")
    finally:
        sink.close()
    assert sum(committed_offsets(settings).values()) == len(before)
    monkeypatch.setattr("sinks.stored_positions.MAX_GAPS", 2)
    unanswered: list[AIOTopicPartition] = []

    async def coordinator_silent(consumer: AIOKafkaConsumer, tp: AIOTopicPartition) -> int | None:
        unanswered.append(tp)
        raise CoordinatorUnreachable("injected: no group coordinator answered for the committed offset")

    monkeypatch.setattr(AIOKafkaConsumer, "committed", coordinator_silent)
    second = RunningSink(ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(10_000, 0.3)))
    try:
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == len(before) + len(after),
            what="every offset committed",
        )
    finally:
        second.close()
    assert unanswered, "the committed offsets were read after all"
    assert second.loop.stats.consumed == len(after)  # re-read from the committed offset, as the group says
    assert topic_rows(ch, "events", settings) == len(good)  # raw rows: nothing stored twice
    usage = "SELECT sum(events) FROM leadpulse.content_usage_daily WHERE content_id = {c:String}"
    assert count(ch, usage, c=content) == len(good)


class QueryRefused(FaultyClient):
    """A real client on which the queries holding ``marker`` fail as unreachable ``refuse`` times:
    ClickHouse away just when a partition's resume point is read."""

    def __init__(self, real: Client, marker: str, refuse: int = 1) -> None:
        super().__init__(real)
        self.marker = marker
        self.refuse = refuse

    def query(self, *args: Any, **kwargs: Any) -> Any:
        if self.refuse > 0 and self.marker in str(args[0] if args else kwargs.get("query", "")):
            self.refuse -= 1
            raise OperationalError("injected: ClickHouse unreachable")
        return self.real.query(*args, **kwargs)


def stored_above_the_commit(ch: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> int:
    """Six content views on one partition: offsets 0..2 stored and committed, 3..5 stored above the commit
    (the state a crash between insert and commit leaves). Returns how many were stored."""
    registry = default_registry()
    topic = settings.topic("events.content_views")
    events = [
        {**e, "event_id": f"{settings.topic_prefix}{e['event_id']}"}
        for e in sample_events("content_view", 6, seed=43)
    ]
    first = ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(10_000, 0.3))
    sink = RunningSink(first)
    try:
        for part, committed in ((events[:3], True), (events[3:], False)):
            with Producer(settings) as producer:
                for event in part:
                    producer.send_encoded(topic, b"k", registry.encode("content_view", event))
            if committed:
                wait_for(lambda: sum(committed_offsets(settings).values()) == 3, what="first part committed")

                async def dies_before_committing() -> None:
                    """From here on the sink stores but never commits."""

                monkeypatch.setattr(first, "_commit", dies_before_committing)
        wait_for(lambda: topic_rows(ch, "events", settings) == 6, what="later records stored")
    finally:
        sink.close()
    assert sum(committed_offsets(settings).values()) == 3
    return len(events)


class UnavailableHooks(SinkHooks):
    """Counts what the loop reports as ClickHouse unavailable (``leadpulse_sink_failures_total{kind=
    "unavailable"}`` in a sink process)."""

    def __init__(self) -> None:
        self.unavailable_count = 0

    def unavailable(self) -> None:
        self.unavailable_count += 1


def resumes_despite(ch: Client, settings: Settings, refusing: QueryRefused, stored: int) -> None:
    """A sink on ``refusing`` stays up, commits every offset and stores nothing twice; the refused query
    is counted as ClickHouse unavailable (so LeadpulseSinkFailing can fire in a long outage)."""
    hooks = UnavailableHooks()
    second = RunningSink(ClickHouseSinkLoop(settings, refusing, policy=BatchPolicy(10_000, 0.3), hooks=hooks))
    try:
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == stored or not second.thread.is_alive(),
            what="every offset committed",
        )
        assert second.thread.is_alive(), "the sink loop ended"
    finally:
        second.close()
    assert refusing.refuse == 0, "the refused query was not made"
    assert topic_rows(ch, "events", settings) == stored  # raw rows: nothing stored twice
    assert hooks.unavailable_count == 1, "the refused query was not counted as ClickHouse unavailable"


def test_a_resume_point_clickhouse_cannot_give_at_the_first_fetch_is_waited_for_not_fatal(
    ch: Client, broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition assigned while its committed offset could not be read gets its resume point at its
    first fetch. When ClickHouse does not answer that query, the loop raised out of ``step``: the sink
    ended (a process exit with a traceback), its fetched records neither taken nor re-read. Now it backs
    off like any ClickHouse failure, fetches the records again afterwards and resumes as usual: the
    stored records above the commit are skipped, nothing is stored twice."""
    stored = stored_above_the_commit(ch, broker_settings, monkeypatch)

    async def coordinator_silent(consumer: AIOKafkaConsumer, tp: AIOTopicPartition) -> int | None:
        raise CoordinatorUnreachable("injected: no group coordinator answered for the committed offset")

    monkeypatch.setattr(AIOKafkaConsumer, "committed", coordinator_silent)
    refusing = QueryRefused(ch, "lagInFrame")  # the gaps listing (stored_gaps)
    resumes_despite(ch, broker_settings, refusing, stored)


class QueryRefusedCommands(QueryRefused):
    """``QueryRefused`` that also runs statements (an erasure's deletes)."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.command(*args, **kwargs)


def test_with_a_server_an_erasure_arriving_while_the_first_step_backs_off_is_swept_after_the_store(
    ch: Client, broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a ClickHouse server the sink sweeps a lead's rows stored after forget's delete, but not for
    erasures read at its start. Those were told apart as "whatever the first look for new erasures finds",
    and the first step that takes records may back off before it looks (here: a resume point ClickHouse
    cannot give at a partition's first fetch). An erasure arriving meanwhile was taken for one read at
    start and not swept, though the sink held the lead's visits taken in that step: stored after the
    back-off, after forget's delete, they stayed."""
    settings = broker_settings
    stored_above_the_commit(ch, settings, monkeypatch)  # content views stored above their commit

    async def coordinator_silent(consumer: AIOKafkaConsumer, tp: AIOTopicPartition) -> int | None:
        raise CoordinatorUnreachable("injected: no group coordinator answered for the committed offset")

    monkeypatch.setattr(AIOKafkaConsumer, "committed", coordinator_silent)
    monkeypatch.setattr("sinks.sink_loop.RESUME_RETRY_S", 30.0)  # room to log the erasure meanwhile
    now = int(time.time() * 1000)
    gone = f"{settings.topic_prefix}L-first-step"
    send_visits(settings, now, gone)  # fetched with the content views, by the first step
    refusing = QueryRefusedCommands(ch, "lagInFrame")  # the content views' resume point, at the first fetch
    loop = ClickHouseSinkLoop(settings, refusing, policy=BatchPolicy(10_000, 0.3))
    loop.apply_erasures = False  # as with an http:// DSN: this process does not own the engine
    running = RunningSink(loop)
    try:
        wait_for(lambda: loop.retry_at is not None, timeout=30, what="the first fetch's back-off")
        assert loop.stats.consumed == 3, "the visits were not taken by the step that backed off"
        assert count(ch, "SELECT count() FROM leadpulse.events WHERE lead_id = {l:String}", l=gone) == 0
        record = forget_with_a_server(ch, settings, gone, now)
        wait_for(lambda: loop.erasures is not None and loop.erasures.is_erased(gone), what="erasure tailed")
        assert loop.retry_at is not None, "the back-off ended before the erasure arrived: not staged"
        wait_for(lambda: loop.retry_at is None and loop.stats.commits > 0, timeout=60, what="back-off over")
        wait_for(lambda: loop.stats.inserted.get("events", 0) >= 3, timeout=30, what="the visits stored")
        time.sleep(1.0)  # a sweep would follow the store in the same step
    finally:
        running.close()
    left = remaining_rows(client_runner(ch), record)
    assert not any(left.values()), f"rows of the forgotten lead stored after the forget: {left}"


def test_stored_positions_clickhouse_cannot_give_at_assignment_are_read_at_the_first_fetch(
    ch: Client, broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ClickHouse not answering the read of the highest stored offsets when partitions are assigned (a
    rebalance, or the start, during an outage) raised out of ``step`` and ended the sink. Now the
    partitions' resume points are read at their first fetch (backing off there while ClickHouse does not
    answer): the stored records above the commit are skipped, nothing is stored twice."""
    stored = stored_above_the_commit(ch, broker_settings, monkeypatch)
    refusing = QueryRefused(ch, "max(offset)")  # stored_positions
    resumes_despite(ch, broker_settings, refusing, stored)


def test_the_gaps_among_stored_offsets_are_listed_from_the_committed_offset_and_bounded(
    ch: Client, broker_settings: Settings
) -> None:
    """The listing the resume rule rests on, on chDB: offsets no row holds between the lower bound (the
    committed offset) and the highest stored one, per partition; rows sharing an offset are no gap."""
    table = TableSpec(
        f"gaps_{broker_settings.topic_prefix.strip('-_.').replace('-', '_')}", (), lambda *a: ()
    )
    ch.command(
        f"CREATE TABLE {table.qualified} (topic String, partition UInt32, offset UInt64) "
        "ENGINE = MergeTree ORDER BY tuple()"
    )
    try:
        rows = [("a", 0, o) for o in (2, 2, 3, 5, 9, 9, 10)] + [("a", 1, o) for o in (0, 1, 2)]
        rows += [("b", 0, o) for o in (4, 8)] + [("c", 0, o) for o in (1, 3, 5, 7, 9)]
        ch.insert(table.qualified, rows, column_names=["topic", "partition", "offset"])
        lowest = {("a", 0): 1, ("a", 1): 0, ("b", 0): 5, ("c", 0): 0, ("d", 0): 0}
        assert stored_gaps(ch, table, lowest, limit=3) == {
            ("a", 0): [(1, 1), (4, 4), (6, 8)],  # from the lower bound on; the doubled 2 and 9 are no gap
            ("b", 0): [(5, 7)],  # below the lower bound nothing is looked at
            ("c", 0): [(0, 0), (2, 2), (4, 4)],  # three of five: the caller asks for one more than it keeps
        }
    finally:
        ch.command(f"DROP TABLE IF EXISTS {table.qualified}")


class RefusedFromCall(FaultyClient):
    """A real client that, from its ``fail_from``-th insert call on, refuses inserts as unreachable (a
    retryable ``OperationalError``, nothing stored) until ``fail_before`` is cleared."""

    def __init__(self, real: Client, fail_from: int) -> None:
        super().__init__(real)
        self.fail_from = fail_from

    def _faulty(self, insert: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.insert_calls + 1 == self.fail_from:
            self.fail_before = True
        return super()._faulty(insert, *args, **kwargs)


def test_a_row_refused_in_a_bisection_whose_batch_a_rebalance_dropped_is_dead_lettered_by_the_next_owner(
    ch: Client, clickhouse_dsn: str, broker_settings: Settings
) -> None:
    """ClickHouse refuses a row as invalid; the sink bisects its batch, left halves first, and dead-letters
    the refused rows only once the whole write returns. Here an insert after the refused row's fails as
    retryable once a later half is stored: the partition holds rows after the refused one, not it, and no
    dead letter yet. The batch waits for its re-send; a rebalance during the back-off drops it, and the
    partition's next owner resumes. Skipping through the highest stored offset lost the refused record
    (neither stored nor dead-lettered); the gap it leaves is now taken again and the record dead-lettered."""
    settings = broker_settings
    registry = default_registry()
    topic = settings.topic("events.content_views")
    good = [
        {**e, "event_id": f"{settings.topic_prefix}{e['event_id']}"}
        for e in sample_events("content_view", 7, seed=38)
    ]
    bad = {**good[0], "event_id": f"{settings.topic_prefix}negative-dwell", "dwell_ms": -5}  # CHECK refuses
    values = [registry.encode("content_view", e) for e in good]
    values[1:1] = [registry.encode("content_view", bad)]
    with Producer(settings) as producer:
        for value in values:
            producer.send_encoded(topic, b"k", value)  # one key: one partition, offsets 0..7, refused at 1
    # The batch of all 8 rows is bisected, left first: inserts 1 [0-7], 2 [0-3], 3 [0-1] are refused as
    # invalid, 4 [0] is stored, 5 [1] refused (the bad row, alone), 6 [2-3] stored, 7 [4-7] finds ClickHouse
    # unreachable: a retryable failure, so the batch is kept for a re-send and nothing is dead-lettered. The
    # re-sends fail the same way until the rebalance has dropped the batch.
    faulty = RefusedFromCall(ch, fail_from=7)
    other = clickhouse_connect.get_client(dsn=clickhouse_dsn)  # a second handle on the same engine
    dropped = _Logged("rebalance: dropping")
    sink_log = logging.getLogger("sinks.sink_loop")
    level = sink_log.level
    sink_log.setLevel(logging.INFO)
    sink_log.addHandler(dropped)
    # Due by rows only: the 8 records make one batch however the fetches split them.
    loop = ClickHouseSinkLoop(settings, faulty, policy=BatchPolicy(len(values), 600.0))
    first = RunningSink(loop)
    second: RunningSink | None = None
    stored = "SELECT DISTINCT offset FROM leadpulse.events WHERE topic = {t:String} ORDER BY offset"
    try:
        wait_for(lambda: loop.stats.failures >= 1, timeout=30, what="the retryable failure in the bisection")
        assert faulty.insert_calls >= 7
        assert [o for (o,) in ch.query(stored, parameters={"t": topic}).result_rows] == [0, 2, 3]
        assert loop.stats.dead_lettered == 0 and loop.sink.closed, "the batch is held for a re-send"
        assert committed_offsets(settings) == {}
        # The rebalance: a second sink joins the group while the first backs off. aiokafka revokes every
        # partition of the first sink (eager protocol), so ``_apply_rebalance`` drops the held batch with its
        # refused row, whichever sink the partition is assigned to next (it may be the first one again);
        # that owner resumes from the stored rows and the committed offset. Stopping the first sink instead
        # would not drop the batch: its shutdown drain re-sends it (and leaves it to a restart if that fails).
        second = RunningSink(ClickHouseSinkLoop(settings, other, policy=BatchPolicy(500, 0.2)))
        assert dropped.seen.wait(40), "no rebalance dropped the held batch"
        assert loop.stats.dead_lettered == 0, "dead-lettered before the batch was dropped"
        # ClickHouse is back, and what the first sink re-reads is stored, if it keeps the partition.
        loop.sink.policy = BatchPolicy(500, 0.2)
        faulty.fail_before = False
        wait_for(
            lambda: sum(committed_offsets(settings).values()) == len(values),
            timeout=60,
            what="every offset committed by one of the two sinks",
        )
    finally:
        faulty.fail_before = False
        if second is not None:
            second.close()
        first.close()
        other.close()
        sink_log.removeHandler(dropped)
        sink_log.setLevel(level)
    [(committed_tp, end)] = committed_offsets(settings).items()
    assert committed_tp[0] == topic and end == len(values)
    letters = dead_letters_of(settings)
    found = [
        (letter["source_topic"], letter["partition"], letter["offset"], letter["stage"], letter["event_id"])
        for letter in letters
    ]
    assert found == [(topic, committed_tp[1], 1, "sink", bad["event_id"])], "the refused record's letter"
    assert "dwell_ms_not_negative" in letters[0]["error"]
    assert [o for (o,) in ch.query(stored, parameters={"t": topic}).result_rows] == [
        0,
        *range(2, len(values)),
    ]
    assert topic_rows(ch, "events", settings) == len(good)  # raw rows: nothing stored twice
    final = "SELECT count() FROM leadpulse.events FINAL WHERE startsWith(topic, {p:String})"
    assert count(ch, final, p=settings.topic_prefix) == len(good)
    ids = "SELECT uniqExact(event_id) FROM leadpulse.events WHERE startsWith(topic, {p:String})"
    assert count(ch, ids, p=settings.topic_prefix) == len(good)
