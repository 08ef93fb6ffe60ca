"""What a batch processed again after a start-over leaves behind: its metrics counted once, and a core that
raises for one event neither stops the worker nor lets a half-updated state reach the changelog.

Faults are injected into real objects against the real broker, as in test_worker_write_failures.py: one
state wave the broker does not acknowledge, or a ``step`` that updates a state in place and then raises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from prometheus_client import CollectorRegistry

from agents import worker_batch, worker_sla_scan
from agents import worker_records as worker_module
from agents.account import AccountState
from agents.core import StepResult
from agents.kafka_batches import BatchSender, Record
from agents.lead_store import ACCOUNT_PREFIX, due_header
from agents.rules import Rules, load_rules
from agents.sla import FOLLOW_UP
from agents.state import LeadState
from agents.worker import LeadWorker
from streams.broker import create_topics, kafka_client_config
from streams.metrics import Metrics
from streams.producer import Producer
from streams.reader import Decoded, read_topic
from streams.settings import Settings
from streams.topics import TOPICS
from tests.integration.test_worker import HOUR, demo_request, outputs, profile
from tests.integration.worker_harness import durable_states, running_worker, wait_until

pytestmark = pytest.mark.integration

KAFKA_MESSAGE_MAX_BYTES = 1_048_588  # a Kafka broker's default message.max.bytes


def _seen(worker: LeadWorker, lead: str, event_id: str) -> bool:
    """Whether the worker's store holds ``event_id`` among ``lead``'s seen ids (False while a reload has
    emptied the store for a moment)."""
    state = worker.store.get(lead.encode())
    return state is not None and event_id in state.seen


async def _until_ready(worker: LeadWorker, running: asyncio.Task[None]) -> None:
    await wait_until(lambda: worker.ready()[0], running, seen=lambda: "worker never became ready")


def _visit(lead: str, name: str, at: int) -> dict[str, Any]:
    return {
        "event_id": f"{lead}-{name}",
        "event_time": at,
        "lead_id": lead,
        "source": "web",
        "url": "https://x.example/pricing",
        "page_category": "pricing",
    }


def _dead_letters(settings: Settings) -> list[dict[str, Any]]:
    found = []
    for item in read_topic(settings, settings.topic("dlq"), idle_ms=300):
        assert isinstance(item, Decoded), item
        found.append(item.record)
    return found


def test_a_batch_processed_again_after_a_start_over_is_counted_once(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outputs wave acknowledged, the state wave not: the worker starts over and processes the batch
    again. Its records, outputs and dead letters were counted on each pass (consumed, hot leads, stage
    transitions and DLQ records twice)."""
    lead = "L-count"
    failed: list[bool] = []
    real_send = BatchSender.send
    state_topic = broker_settings.topic("leadpulse.internal.lead_state")

    async def state_wave_failing_once(self: BatchSender, records: Sequence[Record]) -> None:
        if not failed and any(topic == state_topic for topic, *_ in records):
            failed.append(True)
            raise KafkaTimeoutError("injected: the broker did not acknowledge the state wave in time")
        await real_send(self, records)

    monkeypatch.setattr(BatchSender, "send", state_wave_failing_once)
    metrics = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(broker_settings, load_rules(None), metrics, scan_interval_s=3600)
    now = int(time.time() * 1000)
    topics = [broker_settings.topic(t) for t in ("leads.profiles", "events.downloads", "events.web_visits")]

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await _until_ready(worker, running)
            with Producer(broker_settings) as producer:
                producer.send("lead_identified", profile(lead, now))
                producer.send("download", demo_request(lead, now - HOUR))
                producer.send_encoded(topics[2], lead, b"\x00not avro")
            await wait_until(
                lambda: bool(failed) and {tp.topic for tp in worker.committed} >= set(topics),
                running,
                timeout_s=30,
                seen=lambda: f"fault {failed}, committed {worker.committed}",
            )

    asyncio.run(scenario())
    hot = outputs(broker_settings)["hot_lead"]
    assert len({r["notification_id"] for r in hot}) == 1, hot

    def value(name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` that carry ``labels`` (0 when there is none)."""
        return sum(
            sample.value
            for family in metrics.registry.collect()
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    consumed = {
        t: value("leadpulse_events_consumed_total", topic=t)
        for t in ("leads.profiles", "events.downloads", "events.web_visits")
    }
    assert consumed == {"leads.profiles": 1.0, "events.downloads": 1.0, "events.web_visits": 1.0}
    assert value("leadpulse_hot_leads_total") == 1.0
    assert value("leadpulse_stage_transitions_total", from_stage="lead", to_stage="mql") == 1.0
    assert value("leadpulse_dlq_records_total", source_topic="events.web_visits", stage="decode") == 1.0
    assert value("leadpulse_events_invalid_total", topic="events.web_visits") == 1.0
    assert value("leadpulse_event_to_score_seconds_count") == 2.0


def test_a_step_that_raises_after_updating_the_state_in_place_leaves_no_trace_in_the_state(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``step`` updates a lead's state in place (no per-event copy); a bug that raises half-way left the
    half-updated state in memory and in the batch, and the lead's next event wrote it to the changelog.
    The event must be dead-lettered once (topic, partition, offset, reason), the worker must go on, and
    neither the store nor the changelog may hold what the failed step did."""
    lead = "L-bug"
    real_step = worker_module.step
    raised: list[int] = []

    def step_with_a_bug(
        state: LeadState | None, key: str, schema: str, event: dict[str, Any], rules: Rules, *args: Any
    ) -> StepResult:
        if event.get("event_id") == f"{lead}-broken" and state is not None:
            raised.append(1)
            state.fit = 999.0  # what the core had done before it failed
            state.seen[event["event_id"]] = event["event_time"]
            raise RuntimeError("injected: the core failed half-way through the event")
        return real_step(state, key, schema, event, rules, *args)

    monkeypatch.setattr(worker_module, "step", step_with_a_bug)
    metrics = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(broker_settings, load_rules(None), metrics, scan_interval_s=3600)
    now = int(time.time() * 1000)

    seen = partial(_seen, worker, lead)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await _until_ready(worker, running)
            with Producer(broker_settings) as producer:
                producer.send("lead_identified", profile(lead, now))
                producer.send("download", demo_request(lead, now - HOUR))
            await wait_until(lambda: seen(f"{lead}-demo"), running, timeout_s=20)
            fit = worker.store.get(lead.encode()).fit  # type: ignore[union-attr]
            with Producer(broker_settings) as producer:  # one flush: most likely one batch
                producer.send("web_visit", _visit(lead, "broken", now - 30_000))
                producer.send("web_visit", _visit(lead, "after", now - 20_000))
            await wait_until(lambda: seen(f"{lead}-after"), running, timeout_s=30)
            visits = broker_settings.topic("events.web_visits")
            await wait_until(
                lambda: any(tp.topic == visits for tp in worker.committed), running, timeout_s=20
            )
            state = worker.store.get(lead.encode())
            assert state is not None and state.fit == fit, "the failed step's change stayed in memory"
            assert f"{lead}-broken" not in state.seen
            assert not running.done()

    asyncio.run(scenario())
    assert raised, "the injected bug never ran"
    durable = durable_states(broker_settings).get(lead.encode())
    assert durable is not None and f"{lead}-after" in durable.seen and durable.stage == "mql"
    assert durable.fit != 999.0 and f"{lead}-broken" not in durable.seen, "a half-updated state was written"
    letters = [d for d in _dead_letters(broker_settings) if d["event_id"] == f"{lead}-broken"]
    assert len(letters) == 1, letters
    letter = letters[0]
    assert letter["source_topic"] == broker_settings.topic("events.web_visits") and letter["offset"] >= 0
    assert letter["stage"] == "process" and "injected" in letter["error"], letter
    assert (
        metrics.registry.get_sample_value(
            "leadpulse_dlq_records_total", {"source_topic": "events.web_visits", "stage": "process"}
        )
        == 1.0
    )


@pytest.mark.parametrize("broker_limit", [None, KAFKA_MESSAGE_MAX_BYTES])
def test_a_state_too_large_to_write_dead_letters_its_events_instead_of_stalling_the_worker(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch, broker_limit: int | None
) -> None:
    """An anonymous visitor's state buffers up to 200 events of up to 64 KiB each (bounded in number, not in
    bytes). A Kafka broker refuses a record over its ``message.max.bytes`` (1 MB by default) for good: the
    worker started over and retried the same batch for ever, a warning each time, processing nothing else
    (``broker_limit``: that refusal, injected, since Tansu takes the 9 MB state; without it the old code
    wrote it). Now the records of that key are dead-lettered with the size in the reason, counted, and the
    worker goes on."""
    if broker_limit is not None:
        real_send = BatchSender.send

        async def send_as_kafka(self: BatchSender, records: Sequence[Record]) -> None:
            for topic, key, value, *_ in records:
                if len(value or b"") + len(key or b"") > broker_limit:
                    raise MessageSizeTooLargeError(
                        f"injected: {topic} refuses a {len(value or b'')}-byte record"
                    )
            await real_send(self, records)

        monkeypatch.setattr(BatchSender, "send", send_as_kafka)
    anonymous = "anon-big"
    now = int(time.time() * 1000)
    big = [
        {
            "event_id": f"{anonymous}-{i}",
            "event_time": now - 60_000 + i,
            "anonymous_id": anonymous,
            "source": "web",
            "url": "https://x.example/" + "p" * 60_000,
            "page_category": "blog",
        }
        for i in range(150)  # ~9 MB of state: over the producer's limit too, so the old code stalled
    ]
    metrics = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(broker_settings, load_rules(None), metrics, scan_interval_s=3600)
    after = "L-after-big"

    seen = partial(_seen, worker)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await _until_ready(worker, running)
            with Producer(broker_settings) as producer:
                for event in big:
                    producer.send("web_visit", event)
            with Producer(broker_settings) as producer:
                producer.send("web_visit", _visit(after, "visit", now))
            await wait_until(
                lambda: seen(after, f"{after}-visit"),
                running,
                timeout_s=60,
                seen=lambda: f"committed {worker.committed}",
            )
            visits = broker_settings.topic("events.web_visits")
            await wait_until(
                lambda: sum(o for tp, o in worker.committed.items() if tp.topic == visits) == len(big) + 1,
                running,
                timeout_s=30,
                seen=lambda: f"committed {worker.committed}",
            )

    asyncio.run(scenario())
    letters = [d for d in _dead_letters(broker_settings) if (d["event_id"] or "").startswith(anonymous)]
    assert letters, "no event of the over-large state was dead-lettered"
    assert {d["error_type"] for d in letters} == {"RecordTooLarge"}, {d["error_type"] for d in letters}
    assert "leadpulse.internal.lead_state" in letters[0]["error"] and "bytes" in letters[0]["error"]
    assert len({d["event_id"] for d in letters}) == len(letters), "an event dead-lettered twice"
    durable = durable_states(broker_settings).get(anonymous.encode())
    kept = len(durable.buffer) if durable is not None else 0
    assert kept + len(letters) == len(big), (kept, len(letters))
    assert durable is None or len(durable.to_bytes()) <= 1_000_000
    assert metrics.registry.get_sample_value(
        "leadpulse_worker_records_too_large_total", {"topic": "leadpulse.internal.lead_state"}
    )
    assert metrics.registry.get_sample_value(
        "leadpulse_events_invalid_total", {"topic": "events.web_visits", "reason": "record_too_large"}
    ) == len(letters)


def test_an_sla_scan_that_raises_for_one_lead_neither_stops_the_worker_nor_keeps_what_it_half_did(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``check_timers`` (the SLA scan's core) updates a state in place too. A bug that raised in it escaped
    the poll loop: the worker exited, and after a restart the same due lead raised again (a crash loop).
    Now the lead is left out of the scans for a back-off (an error logged), what the failed call did is
    dropped by a reload, and the other leads' timers fire."""
    buggy, fine = "L-timer-bug", "L-timer-ok"
    t = int(time.time() * 1000) - 2 * HOUR  # demo requests two hours ago: their 1 h follow-up SLAs are due
    real_check = worker_sla_scan.check_timers
    raised: list[str] = []

    def check_with_a_bug(state: LeadState, rules: Rules, now_ms: int) -> StepResult:
        if state.key == buggy:
            raised.append(state.key)
            state.fit = 999.0
            raise RuntimeError("injected: the SLA scan failed half-way through a lead")
        return real_check(state, rules, now_ms)

    monkeypatch.setattr(worker_sla_scan, "check_timers", check_with_a_bug)
    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=0.3, idle_after_s=1)

    seen = partial(_seen, worker)

    def fired(lead: str) -> list[str]:
        state = worker.store.get(lead.encode())
        timer = state.timers.get(FOLLOW_UP) if state is not None else None
        return timer.fired if timer is not None else []

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await _until_ready(worker, running)
            with Producer(broker_settings) as producer:
                for lead in (buggy, fine):
                    producer.send("lead_identified", {**profile(lead, t), "event_time": t})
                    producer.send("download", demo_request(lead, t + 60_000))
            await wait_until(lambda: len(fired(fine)) >= 2, running, timeout_s=60, seen=lambda: raised)
            assert raised, "the injected bug never ran"
            with Producer(broker_settings) as producer:  # the lead's events are still processed
                producer.send("web_visit", _visit(buggy, "later", int(time.time() * 1000)))
            await wait_until(lambda: seen(buggy, f"{buggy}-later"), running, timeout_s=30)
            state = worker.store.get(buggy.encode())
            assert state is not None and state.fit != 999.0, "the failed scan's change stayed in memory"

    asyncio.run(scenario())
    durable = durable_states(broker_settings).get(buggy.encode())
    assert durable is not None and durable.fit != 999.0 and f"{buggy}-later" in durable.seen


def test_a_state_the_sla_scan_grows_past_the_record_limit_does_not_hold_back_every_other_leads_timers(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lead state just under the record limit that its SLA firing pushes over it (the marker and the
    recycle's seen id are a few bytes). The scan's ``RecordTooLarge`` made the worker start over, with a
    back-off, and the scan dropped every other lead's firings with it; after the reload the same lead was due
    again and the same refusal came back, for ever: a full reload and a warning per scan, and no SLA alert
    of the worker's partitions ever written. Now that lead is left out of the scans (as one whose
    ``check_timers`` raises) and the other leads' timers fire and are written."""
    big, fine = "L-timer-big", "L-timer-fine"
    t = int(time.time() * 1000) - 2 * HOUR  # demo requests two hours ago: their 1 h follow-up SLAs are due
    real_check = worker_sla_scan.check_timers
    scanned: list[str] = []

    def check_growing_one_state(state: LeadState, rules: Rules, now_ms: int) -> StepResult:
        result = real_check(state, rules, now_ms)
        if state.key == big:
            scanned.append(state.key)
            if result.changed:  # stands for the few bytes a firing adds to a state at the limit
                state.profile["padding"] = "x" * 1_100_000
        return result

    monkeypatch.setattr(worker_sla_scan, "check_timers", check_growing_one_state)
    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=0.3, idle_after_s=1)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await _until_ready(worker, running)
            with Producer(broker_settings) as producer:
                for lead in (big, fine):
                    producer.send("lead_identified", {**profile(lead, t), "event_time": t})
                    producer.send("download", demo_request(lead, t + 60_000))
            await wait_until(lambda: bool(scanned), running, timeout_s=60)
            await asyncio.sleep(4)  # a dozen scans

    asyncio.run(scenario())
    assert len(scanned) == 1, f"the lead was scanned {len(scanned)} times (a reload per scan)"
    durable = durable_states(broker_settings)
    fine_state, big_state = durable.get(fine.encode()), durable.get(big.encode())
    timer = fine_state.timers.get(FOLLOW_UP) if fine_state is not None else None
    assert timer is not None and len(timer.fired) >= 2, "the other lead's SLA firings were never written"
    assert big_state is not None and "padding" not in big_state.profile


def test_a_due_lead_whose_stored_state_does_not_decode_does_not_crash_the_worker_at_each_scan(
    broker_settings: Settings,
) -> None:
    """The SLA scan decodes a due lead's state (``LeadStore.get``) and asks ``next_deadline`` of it outside
    the guard of ``check_timers``: a changelog state that does not decode (written by another version, or
    damaged) raised out of the scan and the worker exited; restarted, it restored the same due state and
    exited again (a crash loop). Now that lead is left out of the scans like one whose ``check_timers``
    raises, and the worker goes on."""
    create_topics(
        broker_settings.bootstrap, broker_settings.topic_prefix, TOPICS, kafka_client_config(broker_settings)
    )
    past = int(time.time() * 1000) - HOUR
    with Producer(broker_settings) as producer:
        producer.send_encoded(
            broker_settings.topic("leadpulse.internal.lead_state"),
            b"L-undecodable",
            b"{not a lead state",
            headers=due_header(past),
        )
    worker = LeadWorker(broker_settings, load_rules(None), scan_interval_s=0.3, idle_after_s=1)
    later = "L-after-undecodable"

    seen = partial(_seen, worker)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await _until_ready(worker, running)
            await wait_until(lambda: bool(worker.scan_failed), running, timeout_s=30)
            with Producer(broker_settings) as producer:
                producer.send("web_visit", _visit(later, "visit", int(time.time() * 1000)))
            await wait_until(lambda: seen(later, f"{later}-visit"), running, timeout_s=30)
            await asyncio.sleep(1)  # more scans
            assert not running.done()

    asyncio.run(scenario())


def test_a_state_that_cannot_be_encoded_dead_letters_its_events_instead_of_crash_looping(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flush`` builds each touched lead's state record (``next_deadline``, ``to_bytes``) after
    ``process``'s per-record guard: a core bug there (a state holding a value the encoder refuses) escaped
    the poll loop, the worker exited, and after a restart the same batch raised again (a crash loop). Now
    the batch is dropped unwritten, that lead's input records of the batch are dead-lettered (stage
    ``process``, the exception in the error), and the rest of the batch is processed and committed."""
    bad, fine = "L-unencodable", "L-encodable"
    real_step = worker_module.step
    raised: list[int] = []

    def step_with_a_bug(
        state: LeadState | None, key: str, schema: str, event: dict[str, Any], *args: Any
    ) -> StepResult:
        """The core leaves a value in the state that its encoder refuses (the state's own code may be
        compiled, leadpulse/native.py: the bug is put in its data, not in its methods)."""
        result = real_step(state, key, schema, event, *args)
        if event.get("event_id") == f"{bad}-poison":
            raised.append(1)
            result.state.profile["injected"] = injected_unencodable()
        return result

    monkeypatch.setattr(worker_module, "step", step_with_a_bug)
    metrics = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(broker_settings, load_rules(None), metrics, scan_interval_s=3600)
    now = int(time.time() * 1000)
    visits = broker_settings.topic("events.web_visits")

    seen = partial(_seen, worker)

    def visits_committed() -> int:
        return sum(o for tp, o in worker.committed.items() if tp.topic == visits)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await _until_ready(worker, running)
            with Producer(broker_settings) as producer:
                for lead in (bad, fine):
                    producer.send("lead_identified", profile(lead, now))
            await wait_until(
                lambda: seen(bad, f"{bad}-profile") and seen(fine, f"{fine}-profile"), running, timeout_s=20
            )
            with Producer(broker_settings) as producer:  # one flush: most likely one batch
                producer.send("web_visit", _visit(bad, "poison", now - 30_000))
                producer.send("web_visit", _visit(fine, "visit", now - 20_000))
            await wait_until(
                lambda: seen(fine, f"{fine}-visit") and visits_committed() == 2,
                running,
                timeout_s=30,
                seen=lambda: f"raised {len(raised)}, committed {worker.committed}",
            )
            with Producer(broker_settings) as producer:  # the lead's later events are processed
                producer.send("web_visit", _visit(bad, "after", now - 10_000))
            await wait_until(lambda: seen(bad, f"{bad}-after") and visits_committed() == 3, running, 30)
            assert not seen(bad, f"{bad}-poison")
            assert not running.done()

    asyncio.run(scenario())
    assert raised, "the injected bug never ran"
    durable = durable_states(broker_settings)
    bad_state, fine_state = durable.get(bad.encode()), durable.get(fine.encode())
    assert (
        bad_state is not None and f"{bad}-after" in bad_state.seen and f"{bad}-poison" not in bad_state.seen
    )
    assert fine_state is not None and f"{fine}-visit" in fine_state.seen
    letters = [d for d in _dead_letters(broker_settings) if d["source_topic"] == visits]
    assert [d["event_id"] for d in letters] == [f"{bad}-poison"], letters
    letter = letters[0]
    assert letter["stage"] == "process" and letter["error_type"] == "NotWritable" and letter["offset"] >= 0
    assert "TypeError" in letter["error"] and "injected_unencodable" in letter["error"], letter
    assert bad in letter["error"], letter
    assert (
        metrics.registry.get_sample_value(
            "leadpulse_dlq_records_total", {"source_topic": "events.web_visits", "stage": "process"}
        )
        == 1.0
    )


def test_an_account_that_cannot_be_encoded_dead_letters_its_hops_instead_of_crash_looping(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for an account: its ``account_score`` output is encoded in ``flush``, outside the per-record
    guard. The records that fed it are its hops on the internal accounts topic (keyed by domain): they are
    dead-lettered, the account is not written, and the other account and the leads are."""
    bad_domain = "unencodable.example"
    bad, fine = "L-acct-bad", "L-acct-fine"
    real_record = worker_batch.account_score_record
    raised: list[str] = []

    def record_with_a_bug(account: AccountState, computed_at: int) -> dict[str, Any]:
        if account.domain == bad_domain:
            raised.append(account.domain)
            raise ValueError("injected: the account holds a value the encoder refuses")
        return real_record(account, computed_at)

    monkeypatch.setattr(worker_batch, "account_score_record", record_with_a_bug)
    metrics = Metrics(CollectorRegistry(), component="worker")
    worker = LeadWorker(broker_settings, load_rules(None), metrics, scan_interval_s=3600)
    now = int(time.time() * 1000)

    def hops_dead_lettered() -> float:
        return (
            metrics.registry.get_sample_value(
                "leadpulse_dlq_records_total",
                {"source_topic": "leadpulse.internal.accounts", "stage": "process"},
            )
            or 0.0
        )

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await _until_ready(worker, running)
            with Producer(broker_settings) as producer:
                producer.send("lead_identified", profile(bad, now, company_domain=bad_domain))
                producer.send("lead_identified", profile(fine, now))
                for lead in (bad, fine):
                    producer.send("download", demo_request(lead, now - HOUR))
            await wait_until(
                lambda: (
                    hops_dead_lettered() >= 1
                    and worker.store.get_account(ACCOUNT_PREFIX + b"buyer.example") is not None
                ),
                running,
                timeout_s=30,
                seen=lambda: f"raised {raised}, committed {worker.committed}",
            )
            assert worker.store.get_account(ACCOUNT_PREFIX + bad_domain.encode()) is None
            assert not running.done()

    asyncio.run(scenario())
    found = outputs(broker_settings)
    assert {r["domain"] for r in found["account_score"]} == {"buyer.example"}
    letters = [d for d in found["dead_letter"] if d["source_topic"].endswith("leadpulse.internal.accounts")]
    assert letters and all(d["stage"] == "process" and d["error_type"] == "NotWritable" for d in letters)
    assert "ValueError" in letters[0]["error"] and "injected" in letters[0]["error"], letters[0]
    durable = durable_states(broker_settings)
    for lead in (bad, fine):
        state = durable.get(lead.encode())
        assert state is not None and f"{lead}-demo" in state.seen, lead


class injected_unencodable:  # its name is what the dead letter's error shows
    """A value no JSON encoder takes."""
