"""The lead worker against the real local broker: a scripted scenario, then kill -9 and recovery."""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from agents.core import check_timers, step
from agents.rules import load_rules
from agents.state import LeadState
from leadpulse.live_view import scrape, total
from schemas.registry import default_registry
from streams.broker import EmbeddedBroker, free_port
from streams.producer import Producer
from streams.reader import Decoded, read_topic
from streams.settings import Settings
from tests.processes import CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.integration

HOUR = 3_600_000
DAY = 24 * HOUR
ID_FIELD = {"stage_transition": "transition_id", "hot_lead": "notification_id", "sla_timeout": "timeout_id"}


def start_worker(settings: Settings, broker: EmbeddedBroker, log: Path) -> tuple[CliProcess, int]:
    port = free_port()
    env = leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=settings.topic_prefix,
        data_dir=settings.data_dir,
        web_port=port,
    )
    proc = CliProcess(["worker"], env, log)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "worker ready", proc)
    return proc, port


def consumed(port: int) -> float:
    """Sum of the worker's leadpulse_events_consumed_total, read from its /metrics."""
    return total(scrape(f"http://127.0.0.1:{port}/metrics"), "leadpulse_events_consumed_total")


def outputs(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for topic in (
        "leads.scores",
        "leads.stage_transitions",
        "leads.hot",
        "leads.sla_timeouts",
        "accounts.scores",
        "dlq",
    ):
        for item in read_topic(settings, settings.topic(topic), idle_ms=300):
            assert isinstance(item, Decoded), item
            found[item.schema].append(item.record)
    return found


def ids(records: list[dict[str, Any]], schema: str) -> list[str]:
    return [r[ID_FIELD[schema]] for r in records]


def demo_request(lead: str, at: int) -> dict[str, Any]:
    """A direct inquiry: MQL at once, with the 1 h follow-up clock."""
    return {
        "event_id": f"{lead}-demo",
        "event_time": at,
        "lead_id": lead,
        "source": "web",
        "content_id": "demo-form",
        "asset_type": "demo_request",
    }


def profile(lead: str, now: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"{lead}-profile",
        "event_time": now - 3 * HOUR,
        "lead_id": lead,
        "source": "crm",
        "email": f"{lead.lower()}@buyer.example",
        "company_domain": "buyer.example",
        "company_size": 1200,
        "industry": "software",
        "job_title": "CTO",
        "seniority": "c_level",
        "country": "JP",
        "flags": [],
        "owner": "rep-1",
        **extra,
    }


def test_scripted_scenario_produces_exactly_the_expected_outputs(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    worker, _ = start_worker(broker_settings, broker, tmp_path / "worker.log")
    try:
        with Producer(broker_settings) as producer:
            # HOT: a demo request two hours ago -> immediate MQL, hot lead, SLA (1 h) warned and breached.
            producer.send("lead_identified", profile("HOT", now))
            # STUDENT: disqualified by flag; a demo request must not make it hot.
            producer.send("lead_identified", profile("STUDENT", now, flags=["student"]))
            # ANON: anonymous pricing visits, later identified: the visits count for the lead.
            for i in range(3):
                producer.send(
                    "web_visit",
                    {
                        "event_id": f"anon-{i}",
                        "event_time": now - 5 * HOUR + i,
                        "anonymous_id": "A-77",
                        "source": "web",
                        "url": "https://x.example/pricing",
                        "page_category": "pricing",
                    },
                )
            # FOLLOWED: immediate MQL a minute ago, then accepted by sales -> sal, no SLA events.
            producer.send("lead_identified", profile("FOLLOWED", now))
        wait_until(
            lambda: len(outputs(broker_settings)["stage_transition"]) >= 3, 60, "profiles processed", worker
        )
        with Producer(broker_settings) as producer:
            producer.send(
                "download",
                {
                    "event_id": "hot-demo",
                    "event_time": now - 2 * HOUR,
                    "lead_id": "HOT",
                    "source": "web",
                    "content_id": "demo",
                    "asset_type": "demo_request",
                },
            )
            producer.send(
                "download",
                {
                    "event_id": "stu-demo",
                    "event_time": now - 2 * HOUR,
                    "lead_id": "STUDENT",
                    "source": "web",
                    "content_id": "demo",
                    "asset_type": "demo_request",
                },
            )
            producer.send(
                "download",
                {
                    "event_id": "fol-demo",
                    "event_time": now - 60_000,
                    "lead_id": "FOLLOWED",
                    "source": "web",
                    "content_id": "demo",
                    "asset_type": "inquiry",
                },
            )
            producer.send("lead_identified", {**profile("ANON", now), "anonymous_id": "A-77"})
        wait_until(lambda: len(outputs(broker_settings)["hot_lead"]) >= 2, 60, "hot leads", worker)
        with Producer(broker_settings) as producer:
            producer.send(
                "sales_activity",
                {
                    "event_id": "fol-acc",
                    "event_time": now - 30_000,
                    "lead_id": "FOLLOWED",
                    "source": "crm",
                    "activity": "accepted",
                    "owner": "rep-1",
                },
            )
        wait_until(lambda: len(outputs(broker_settings)["sla_timeout"]) >= 2, 60, "SLA events", worker)
        time.sleep(3)  # two more scans: nothing else may fire
        out = outputs(broker_settings)
    finally:
        worker.stop()

    moves = sorted((t["lead_id"], t["from_stage"], t["to_stage"]) for t in out["stage_transition"])
    assert moves == sorted(
        [
            ("HOT", "awareness", "lead"),
            ("HOT", "lead", "mql"),
            ("STUDENT", "awareness", "lead"),
            ("STUDENT", "lead", "disqualified"),
            ("FOLLOWED", "awareness", "lead"),
            ("FOLLOWED", "lead", "mql"),
            ("FOLLOWED", "mql", "sal"),
            ("ANON", "awareness", "lead"),
            ("ANON", "lead", "nurturing"),  # pricing visits = engaged
        ]
    )
    assert sorted(h["lead_id"] for h in out["hot_lead"]) == ["FOLLOWED", "HOT"]
    hot = next(h for h in out["hot_lead"] if h["lead_id"] == "HOT")
    assert hot["signals"] and hot["signals"][0]["event_id"] == "hot-demo"
    assert hot["sla_due_at"] == now - 2 * HOUR + HOUR
    assert sorted((s["lead_id"], s["sla"], s["level"]) for s in out["sla_timeout"]) == [
        ("HOT", "hot_lead_follow_up", "breach"),
        ("HOT", "hot_lead_follow_up", "warning"),
    ]
    anon_scores = [s for s in out["lead_score"] if s["lead_id"] == "ANON"]
    signals = {r["event_id"] for s in anon_scores for r in s["reasons"]}
    assert {"anon-0", "anon-1", "anon-2"} <= signals
    assert out.get("dead_letter", []) == []
    # the account roll-up: every lead has company_domain buyer.example; the account's newest record is the
    # sum of each lead's newest score, the disqualified student counting 0
    newest = {s["lead_id"]: s for s in out["lead_score"]}  # per-lead topic order: last = newest
    counted = {lead: 0.0 if s["stage"] == "disqualified" else s["score"] for lead, s in newest.items()}
    account = out["account_score"][-1]
    assert (account["domain"], account["leads"]) == ("buyer.example", len(newest))
    assert account["score"] == pytest.approx(sum(counted.values()))
    assert account["top_leads"][0]["lead_id"] == max(counted, key=lambda lead: counted[lead])


def assert_emitted_once(out: dict[str, list[dict[str, Any]]], oracle: dict[str, Any]) -> None:
    """Every output id the oracle emits, and no other; at-least-once: a replay after a crash may re-send
    an output, always with the same id (dropped downstream by id), so records with the same id must be
    identical apart from wall-clock stamps."""
    for schema in ID_FIELD:
        got = ids(out[schema], schema)
        assert set(got) == oracle["emitted"][schema], schema
        for dup in [k for k, n in Counter(got).items() if n > 1]:
            variants = {
                tuple(sorted((k, str(v)) for k, v in r.items() if k not in ("fired_at", "computed_at")))
                for r in out[schema]
                if r[ID_FIELD[schema]] == dup
            }
            assert len(variants) == 1, (schema, dup)


def raw_messages(settings: Settings, topic: str) -> list[Any]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=3000,
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def _history(seed: int, now: int, leads: int) -> list[dict[str, Any]]:
    """Web visits keyed by lead over the last 5 days: enough pricing for some leads to cross 100."""
    rng = random.Random(seed)
    events = []
    for lead in range(leads):
        visits = rng.randrange(5, 30)
        for i in range(visits):
            category = rng.choice(["pricing", "pricing", "product", "blog", "case_study"])
            events.append(
                {
                    "event_id": f"L{lead}-{i}",
                    "event_time": now - 5 * DAY + i * 4 * HOUR,
                    "lead_id": f"L{lead}",
                    "source": "web",
                    "url": f"https://x.example/{category}",
                    "page_category": category,
                }
            )
    rng.shuffle(events)  # interleave leads; each lead's own events keep their relative order below
    order: dict[str, int] = defaultdict(int)
    for event in events:  # re-number per lead so per-lead topic order == event-time order
        lead = event["lead_id"]
        event["event_time"] = now - 5 * DAY + order[lead] * 4 * HOUR
        event["event_id"] = f"{lead}-{order[lead]}"
        order[lead] += 1
    return events


def _oracle(events: list[dict[str, Any]], now: int) -> dict[str, Any]:
    rules = load_rules(None)
    states: dict[str, LeadState | None] = {}
    emitted: dict[str, set[str]] = defaultdict(set)
    for event in events:
        key = event["lead_id"]
        result = step(states.get(key), key, "web_visit", dict(event), rules, now)
        states[key] = result.state
        for o in result.outputs:
            if o.schema in ID_FIELD:
                emitted[o.schema].add(o.record[ID_FIELD[o.schema]])
    for state in states.values():
        assert state is not None
        for o in check_timers(state, rules, now).outputs:
            emitted[o.schema].add(o.record[ID_FIELD[o.schema]])
    return {"emitted": emitted, "states": states}


def test_worker_killed_mid_stream_recovers_without_losing_or_duplicating_outputs(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    events = _history(11, now, 300)
    oracle = _oracle(events, now)
    assert oracle["emitted"]["hot_lead"] and oracle["emitted"]["sla_timeout"]  # the scenario exercises both
    registry = default_registry()
    encoded = [registry.encode("web_visit", registry.validate("web_visit", e)) for e in events]
    topic = broker_settings.topic("events.web_visits")
    half = len(encoded) // 2

    def produce(chunk: list[bytes], chunk_events: list[dict[str, Any]]) -> None:
        with Producer(broker_settings) as producer:
            for value, event in zip(chunk, chunk_events, strict=True):
                producer.send_encoded(topic, event["lead_id"], value)

    worker, _ = start_worker(broker_settings, broker, tmp_path / "worker1.log")
    produce(encoded[:half], events[:half])
    wait_until(
        lambda: any(
            True for _ in read_topic(broker_settings, broker_settings.topic("leads.scores"), idle_ms=200)
        ),
        60,
        "first scores",
        worker,
    )
    time.sleep(1.0)
    worker.kill9()
    produce(encoded[half:], events[half:])
    worker, _ = start_worker(broker_settings, broker, tmp_path / "worker2.log")
    expected_sla = len(oracle["emitted"]["sla_timeout"])

    def settled() -> bool:
        out = outputs(broker_settings)
        return len(set(ids(out["sla_timeout"], "sla_timeout"))) >= expected_sla

    try:
        wait_until(settled, 120, "all SLA events after restart", worker)
        time.sleep(3)
        out = outputs(broker_settings)
    finally:
        worker.stop()

    assert_emitted_once(out, oracle)
    final: dict[str, dict[str, Any]] = {}
    for record in out["lead_score"]:
        final[record["lead_id"]] = record  # per-lead topic order: the last one is the newest
    for lead, state in oracle["states"].items():
        assert state is not None
        assert final[lead]["stage"] == state.stage, lead
    assert out.get("dead_letter", []) == []
    # the state itself: the newest changelog entry of every lead equals the oracle's (same events seen)
    changelog = broker_settings.topic("leadpulse.internal.lead_state")
    stored: dict[str, LeadState] = {}
    for message in raw_messages(broker_settings, changelog):
        stored[message.key.decode()] = LeadState.from_bytes(message.value)
    for lead, state in oracle["states"].items():
        assert state is not None
        assert stored[lead].seen == state.seen, lead
        assert stored[lead].stage == state.stage, lead
