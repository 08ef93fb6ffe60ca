"""The sink with a ClickHouse server, at its start: rows of a lead erased before it started, stored after
``forget``'s delete by an earlier sink that stopped before its tail saw the erasure, are swept; and a log
of many erasures with nothing left costs one query per ``LEFT_CHUNK`` erasures, not one per erasure."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from sinks.batch import BatchPolicy
from sinks.erase import LEFT_CHUNK, apply_erasure, erasures_with_rows, remaining_rows
from sinks.query_service import client_runner
from sinks.sink_loop import ClickHouseSinkLoop
from streams.erasures import ErasureLog, erasure_record, publish_erasure
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_clickhouse_sink import (
    RunningSink,
    count,
    forget_with_a_server,
    topic_rows,
    wait_for,
)

pytestmark = pytest.mark.integration


def server_sink(settings: Settings, ch: Client, policy: BatchPolicy) -> ClickHouseSinkLoop:
    loop = ClickHouseSinkLoop(settings, ch, policy=policy)
    loop.apply_erasures = False  # as with an http:// DSN: this process does not own the engine
    return loop


def send_views(settings: Settings, now: int, content: str, *leads: str) -> None:
    """Three views of ``content`` by each lead (they feed ``content_usage_daily``)."""
    with Producer(settings) as producer:
        for lead in leads:
            for n in range(3):
                producer.send(
                    "content_view",
                    {"event_id": f"{lead}-c{n}", "event_time": now - n, "lead_id": lead, "source": "web",
                     "content_id": content, "content_type": "whitepaper", "dwell_ms": 1000,
                     "percent_viewed": 50.0},
                )  # fmt: skip


def usage(ch: Client, content: str) -> int:
    sql = "SELECT sum(events) FROM leadpulse.content_usage_daily WHERE content_id = {c:String}"
    return count(ch, sql, c=content)


def test_rows_an_earlier_sink_stored_after_the_forget_are_swept_by_the_next_sink_at_its_start(
    ch: Client, broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink held rows of a lead when ``forget`` logged the erasure and deleted on the server; it stopped
    before its tail handed it the erasure, and its stop stored the rows, after the delete. The next sink
    read the erasure at its start and never swept it: the rows stayed although the forget succeeded (the
    "Left:" gap of docs/privacy.md). Now the next sink finds them at its start and sweeps them, recorded as
    applied by the sink, with the daily view rebuilt from the other lead's rows only (not counted twice)."""
    settings = broker_settings
    now = int(time.time() * 1000)
    content = f"{settings.topic_prefix}wp"
    gone, stays = f"{settings.topic_prefix}L-gone", f"{settings.topic_prefix}L-kept"
    blind = threading.Event()  # the first sink's tail never hands it the erasure (stopped before)
    drain_new = ErasureLog.drain_new

    def unseen_by_the_first_sink(self: ErasureLog) -> list[dict[str, Any]]:
        return [] if blind.is_set() else drain_new(self)

    monkeypatch.setattr(ErasureLog, "drain_new", unseen_by_the_first_sink)
    blind.set()
    first = server_sink(settings, ch, BatchPolicy(10_000, 60.0))
    running = RunningSink(first)
    try:
        wait_for(lambda: bool(first.stats.assigned), timeout=30, what="partitions assigned")
        send_views(settings, now, content, gone, stays)
        wait_for(lambda: first.stats.consumed >= 6, timeout=30, what="the views taken into a batch")
        assert topic_rows(ch, "events", settings) == 0, "stored before the forget: the race is not staged"
        record = forget_with_a_server(ch, settings, gone, now)
    finally:
        running.close()  # the stop stores the held rows, after forget's delete
    left = remaining_rows(client_runner(ch), record)
    assert left["events"] == 3, f"the stop did not store the lead's rows: the gap is not staged ({left})"
    assert usage(ch, content) == 6
    blind.clear()

    second = RunningSink(server_sink(settings, ch, BatchPolicy(500, 0.2)))
    try:
        wait_for(
            lambda: not any(remaining_rows(client_runner(ch), record).values()),
            timeout=30,
            what="the rows of the lead erased before the start swept",
        )
    finally:
        second.close()
    kept = "SELECT count() FROM leadpulse.events WHERE lead_id = {l:String}"
    assert count(ch, kept, l=stays) == 3
    assert usage(ch, content) == 3, "the daily view still counts the erased lead, or the other twice"
    by_sink = (
        "SELECT count() FROM leadpulse.erasures WHERE erasure_id = {e:String} AND applied_by = 'sink' "
        "AND rows_deleted['events'] = 3"
    )
    assert count(ch, by_sink, e=record["erasure_id"]) == 1


class CountingQueries:
    """A real client counting its ``query`` calls."""

    def __init__(self, real: Client) -> None:
        self.real = real
        self.queries = 0

    def query(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return self.real.query(*args, **kwargs)


def test_erasures_read_at_start_are_checked_for_rows_left_in_one_query_per_chunk(
    ch: Client, broker_settings: Settings
) -> None:
    """Every erasure ever made is on the log and nearly always nothing of them is stored: the check at the
    sink's start asks ClickHouse once per ``LEFT_CHUNK`` erasures, and finds only the one with rows."""
    settings = broker_settings
    now = int(time.time() * 1000)
    prefix = settings.topic_prefix
    leads = range(LEFT_CHUNK + 2)
    records = [erasure_record(f"{prefix}L-old-{n}", [f"{prefix}anon-{n}"], now) for n in leads]
    with Producer(settings) as producer:  # an anonymous visit of a lead in the second chunk is stored
        producer.send(
            "web_visit",
            {"event_id": f"{prefix}anon-visit", "event_time": now, "source": "web",
             "anonymous_id": f"{prefix}anon-{LEFT_CHUNK}", "url": "https://x.example/pricing",
             "page_category": "pricing"},
        )  # fmt: skip
    running = RunningSink(server_sink(settings, ch, BatchPolicy(500, 0.2)))
    try:
        wait_for(lambda: topic_rows(ch, "events", settings) == 1, timeout=30, what="the visit stored")
    finally:
        running.close()
    client = CountingQueries(ch)
    left = erasures_with_rows(client, records)  # type: ignore[arg-type]
    assert [r["lead_id"] for r in left] == [f"{prefix}L-old-{LEFT_CHUNK}"]
    assert client.queries == 2


def test_a_sweep_at_start_waits_for_forgets_own_deletion_so_the_daily_views_are_not_doubled(
    ch: Client, broker_settings: Settings
) -> None:
    """A sink starting while ``forget`` has logged the erasure but not yet deleted finds the lead's rows
    at its start. Sweeping then, alongside forget's own deletion, could insert the other leads' daily-view
    counts twice: it waits until that deletion is recorded, then finds nothing left and records nothing."""
    settings = broker_settings
    now = int(time.time() * 1000)
    content = f"{settings.topic_prefix}wp"
    gone, stays = f"{settings.topic_prefix}L-gone", f"{settings.topic_prefix}L-kept"
    first = RunningSink(server_sink(settings, ch, BatchPolicy(500, 0.2)))
    try:
        send_views(settings, now, content, gone, stays)
        wait_for(lambda: topic_rows(ch, "events", settings) == 6, timeout=30, what="the views stored")
    finally:
        first.close()
    record = erasure_record(gone, [], now)
    publish_erasure(settings, record)  # forget has logged it; its deletion has not run yet
    second = RunningSink(server_sink(settings, ch, BatchPolicy(500, 0.2)))
    try:
        wait_for(lambda: bool(second.loop._pending_erasures), timeout=30, what="the rows found at start")
        time.sleep(1.0)
        assert remaining_rows(client_runner(ch), record)["events"] == 3, "swept alongside forget's deletion"
        apply_erasure(ch, record, applied_by="cli")  # forget's deletion, recorded
        wait_for(lambda: not second.loop._pending_erasures, timeout=30, what="the sweep done with")
    finally:
        second.close()
    assert not any(remaining_rows(client_runner(ch), record).values())
    assert usage(ch, content) == 3
    sweeps = "SELECT count() FROM leadpulse.erasures WHERE erasure_id = {e:String} AND applied_by = 'sink'"
    assert count(ch, sweeps, e=record["erasure_id"]) == 0


class OneStatementAtATime:
    """A real client refusing a statement while one of its inserts runs, as a ClickHouse server does
    within the session clickhouse-connect opens per client ("Session is locked", SESSION_IS_LOCKED)."""

    def __init__(self, real: Client) -> None:
        self.real = real
        self.inserting = 0
        self.refused = 0

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        return self._insert(self.real.insert, *args, **kwargs)

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        return self._insert(self.real.raw_insert, *args, **kwargs)

    def _insert(self, insert: Any, *args: Any, **kwargs: Any) -> Any:
        self._check()
        self.inserting += 1
        try:
            time.sleep(0.3)  # a server insert takes a while: the loop goes on meanwhile
            return insert(*args, **kwargs)
        finally:
            self.inserting -= 1

    def query(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.real.query(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.real.command(*args, **kwargs)

    def _check(self) -> None:
        if self.inserting:
            self.refused += 1
            raise OperationalError("injected: Session is locked by a concurrent client")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_sweep_waiting_for_forget_never_queries_alongside_the_insert_in_flight(
    ch: Client, broker_settings: Settings
) -> None:
    """While a sweep waits for forget's deletion to be recorded (up to ``SWEEP_WAIT_S``), every step asked
    ClickHouse whether it was, also while the insert the step had just started was running, on the same
    client: a server refuses that within the client's session, and each refusal paused the sink for a
    back-off (5 s). Now a step with sweeps pending waits for the insert in flight first."""
    settings = broker_settings
    now = int(time.time() * 1000)
    gone, stays = f"{settings.topic_prefix}L-gone", f"{settings.topic_prefix}L-kept"
    client = OneStatementAtATime(ch)
    loop = server_sink(settings, client, BatchPolicy(5, 0.05))  # type: ignore[arg-type]
    running = RunningSink(loop)
    record = erasure_record(gone, [], now)
    try:
        wait_for(lambda: bool(loop.stats.assigned), timeout=30, what="partitions assigned")
        publish_erasure(settings, record)  # forget has logged it; its deletion has not run yet
        wait_for(lambda: bool(loop._pending_erasures), timeout=30, what="the sweep waiting")
        with Producer(settings) as producer:
            for n in range(40):
                producer.send(
                    "web_visit",
                    {"event_id": f"{stays}-v{n}", "event_time": now - n, "lead_id": stays, "source": "web",
                     "url": "https://x.example/pricing", "page_category": "pricing"},
                )  # fmt: skip
                producer.flush(5.0)
                time.sleep(0.05)
        wait_for(lambda: topic_rows(ch, "events", settings) == 40, timeout=60, what="the visits stored")
        apply_erasure(ch, record, applied_by="cli")
        wait_for(lambda: not loop._pending_erasures, timeout=30, what="the sweep done with")
    finally:
        running.close()
    assert client.refused == 0, f"{client.refused} statement(s) sent alongside an insert"
    assert loop.stats.failures == 0
