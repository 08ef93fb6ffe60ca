"""Erasure records and the in-memory erasure log: who counts as erased, and how the sink recognises an
erased identity in an undecoded event body."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from schemas.registry import HEADER_LEN, default_registry
from sinks.erase import event_head, mutation_target
from sinks.rows import EVENT_TYPES
from streams.erasures import ErasureLog, erasure_id, erasure_record, identities, record_erased
from streams.samples import sample_events
from streams.settings import load_settings

pytestmark = pytest.mark.unit


def fed_log(*records: dict[str, Any]) -> ErasureLog:
    """An ErasureLog fed encoded records the way its consumer feeds it (no broker involved)."""
    log = ErasureLog(load_settings())
    for offset, record in enumerate(records):
        log._take(default_registry().encode("lead_erased", record), offset)
    return log


def test_erasure_id_depends_only_on_the_lead() -> None:
    first = erasure_record("L-1", ["a2", "a1"], 1_000)
    again = erasure_record("L-1", [], 2_000)
    other = erasure_record("L-2", ["a1"], 1_000)
    assert first["erasure_id"] == again["erasure_id"] == erasure_id("L-1")
    assert other["erasure_id"] != first["erasure_id"]


def test_erasure_record_sorts_and_deduplicates_anonymous_ids_and_drops_the_lead_itself() -> None:
    record = erasure_record(" L-1 ", ["a2", "a1", "a2", "", "L-1"], 1_700_000_000_000)
    assert record == {
        "erasure_id": erasure_id("L-1"),
        "lead_id": "L-1",
        "anonymous_ids": ["a1", "a2"],
        "requested_at": 1_700_000_000_000,
    }
    assert identities(record) == {"L-1", "a1", "a2"}


def test_erasure_record_refuses_an_empty_lead_id() -> None:
    with pytest.raises(ValueError, match="lead_id"):
        erasure_record("  ", [], 0)


def test_erasure_record_round_trips_through_its_schema() -> None:
    record = erasure_record("L-1", ["a1"], 5)
    registry = default_registry()
    assert registry.decode(registry.encode("lead_erased", record)) == ("lead_erased", record)


def test_lead_and_its_anonymous_ids_are_erased_and_nobody_else() -> None:
    log = fed_log(erasure_record("L-1", ["a1"], 1))
    assert log.active
    assert log.is_erased("L-1") and log.is_erased("a1")
    assert not log.is_erased("L-2") and not log.is_erased("a2") and not log.is_erased(None)


def test_an_empty_log_erases_nothing() -> None:
    log = fed_log()
    assert not log.active
    assert not log.is_erased("L-1")
    assert log.drain_new() == []


def test_drain_new_hands_each_record_out_once() -> None:
    first, second = erasure_record("L-1", [], 1), erasure_record("L-2", ["a"], 2)
    log = fed_log(first)
    assert log.drain_new() == [first]
    assert log.drain_new() == []
    log._take(default_registry().encode("lead_erased", second), 1)
    assert log.drain_new() == [second]


def test_tombstones_and_undecodable_records_erase_nothing() -> None:
    log = ErasureLog(load_settings())
    log._take(None, 0)
    log._take(b"not avro", 1)
    assert not log.active and log.drain_new() == []


@pytest.mark.parametrize("schema", EVENT_TYPES)
def test_id_time_and_identities_are_read_from_an_undecoded_event_body(schema: str) -> None:
    registry = default_registry()
    for record in sample_events(schema, 20, seed=3):
        body = registry.encode(schema, record)[HEADER_LEN:]
        expected = (
            record["event_id"],
            record["event_time"],
            record.get("anonymous_id"),
            record.get("lead_id"),
        )
        assert event_head(body) == expected


def test_a_truncated_event_body_has_no_identities() -> None:
    assert event_head(b"\x08ab") == (None, None, None, None)


def test_records_of_erased_identities_are_dropped_but_account_rollups_only_lose_the_lead() -> None:
    log = fed_log(erasure_record("L-1", ["a1"], 1))
    assert record_erased("lead_score", {"lead_id": "L-1"}, log.is_erased)
    assert record_erased("web_visit", {"lead_id": None, "anonymous_id": "a1"}, log.is_erased)
    assert not record_erased("web_visit", {"lead_id": "L-2", "anonymous_id": "a9"}, log.is_erased)
    account = {"domain": "x.example", "top_leads": [{"lead_id": "L-1", "score": 9.0}, {"lead_id": "L-2"}]}
    assert not record_erased("account_score", account, log.is_erased)
    assert account["top_leads"] == [{"lead_id": "L-2"}]


def test_mutations_on_the_cluster_layout_run_on_the_local_tables() -> None:
    engine = "Distributed('prod', 'leadpulse', 'events_local', cityHash64(ifNull(lead_id, event_id)))"
    assert mutation_target(engine, "events") == "leadpulse.events_local ON CLUSTER 'prod'"
    assert mutation_target("ReplacingMergeTree ORDER BY (lead_id)", "events") == "leadpulse.events"
    assert mutation_target("", "events") == "leadpulse.events"


class _FakeConsumer:
    """The tail's consumer: hands out the records from its position, one per fetch; ``seek`` moves it."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = values
        self.position = 0

    async def getmany(self, tp: Any, timeout_ms: int = 0) -> dict[Any, list[Any]]:
        if self.position >= len(self.values):
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        offset, self.position = self.position, self.position + 1
        return {tp: [SimpleNamespace(value=self.values[offset], offset=offset)]}

    def seek(self, tp: Any, offset: int) -> None:
        self.position = offset


def test_an_erasure_the_tail_failed_to_take_is_taken_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record whose taking raised something other than a SchemaError (undecodable records are skipped by
    ``_decode``; what is left is not the record's fault: a failure that passes) was skipped for good: the
    process went on scoring and storing the erased lead until a restart. It is taken again after a pause."""
    log = ErasureLog(load_settings())
    values = [default_registry().encode("lead_erased", erasure_record(x, [], 1)) for x in ("L-1", "L-2")]
    log._consumer = _FakeConsumer(values)  # type: ignore[assignment]
    real_take = ErasureLog._take
    failures: list[int] = []

    def take_failing_once(self: ErasureLog, value: bytes | None, offset: int) -> None:
        if offset == 0 and not failures:
            failures.append(offset)
            raise MemoryError("injected: a failure that passes")
        real_take(self, value, offset)

    monkeypatch.setattr(ErasureLog, "_take", take_failing_once)
    real_sleep = asyncio.sleep
    monkeypatch.setattr(asyncio, "sleep", lambda _s: real_sleep(0))

    async def scenario() -> None:
        task = asyncio.create_task(log._tail(TopicPartition(log.topic, 0)))
        for _ in range(200):
            if log.is_erased("L-2"):
                break
            await real_sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert failures == [0]
    assert log.is_erased("L-2")
    assert log.is_erased("L-1")  # skipped for good on the old code
    assert [r["lead_id"] for r in log.drain_new()] == ["L-1", "L-2"]
