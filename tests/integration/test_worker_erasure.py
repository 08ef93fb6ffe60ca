"""``leadpulse forget`` as the worker sees it: the erased lead's state and score are tombstoned, it leaves
its account, and its later or replayed events are dropped, also by a restarted worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from leadpulse.live_view import scrape, total
from streams.broker import EmbeddedBroker
from streams.erasures import erasure_record, publish_erasure
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import HOUR, outputs, profile, raw_messages, start_worker
from tests.processes import wait_until

pytestmark = pytest.mark.integration


def _visit(lead: str, event_id: str, at: int) -> dict[str, object]:
    return {
        "event_id": event_id,
        "event_time": at,
        "lead_id": lead,
        "source": "web",
        "url": "https://x.example/pricing",
        "page_category": "pricing",
    }


def _erased_count(port: int) -> float:
    return total(scrape(f"http://127.0.0.1:{port}/metrics"), "leadpulse_events_erased_total")


def _latest_values(settings: Settings, topic: str) -> dict[str, bytes | None]:
    latest: dict[str, bytes | None] = {}
    for message in raw_messages(settings, settings.topic(topic)):
        latest[message.key.decode()] = message.value  # topic order per key: last wins
    return latest


def _state_values(settings: Settings) -> dict[str, bytes | None]:
    return _latest_values(settings, "leadpulse.internal.lead_state")


def test_erased_lead_loses_its_state_leaves_its_account_and_stays_out_after_a_restart(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    worker, port = start_worker(broker_settings, broker, tmp_path / "worker1.log")
    try:
        with Producer(broker_settings) as producer:
            producer.send("lead_identified", profile("GONE", now))
            producer.send("lead_identified", profile("STAYS", now))
            producer.send("web_visit", _visit("GONE", "gone-1", now - HOUR))
        wait_until(
            lambda: {a["leads"] for a in outputs(broker_settings)["account_score"]} >= {2},
            60,
            "both leads in the account",
            worker,
        )
        publish_erasure(broker_settings, erasure_record("GONE", [], now))
        wait_until(lambda: _state_values(broker_settings).get("GONE", b"") is None, 60, "tombstone", worker)
        # The compacted score topic forgets the lead too (its newest record is a tombstone), not the other.
        scores = _latest_values(broker_settings, "leads.scores")
        assert scores["GONE"] is None and scores["STAYS"] is not None
        account = outputs(broker_settings)["account_score"][-1]
        assert account["leads"] == 1 and [t["lead_id"] for t in account["top_leads"]] == ["STAYS"]

        scores_before = [s for s in outputs(broker_settings)["lead_score"] if s["lead_id"] == "GONE"]
        with Producer(broker_settings) as producer:
            producer.send("web_visit", _visit("GONE", "gone-2", now))
            producer.send("web_visit", _visit("STAYS", "stays-2", now))
        wait_until(lambda: _erased_count(port) >= 1, 60, "the new event dropped", worker)
        wait_until(
            lambda: any(s["trigger_event_id"] == "stays-2" for s in outputs(broker_settings)["lead_score"]),
            60,
            "the other lead still scored",
            worker,
        )
        assert [s for s in outputs(broker_settings)["lead_score"] if s["lead_id"] == "GONE"] == scores_before
    finally:
        worker.stop()

    worker, port = start_worker(broker_settings, broker, tmp_path / "worker2.log")
    try:
        with Producer(broker_settings) as producer:
            producer.send("web_visit", _visit("GONE", "gone-1", now - HOUR))  # a replay of old history
        wait_until(lambda: _erased_count(port) >= 1, 60, "the replayed event dropped", worker)
        assert [s for s in outputs(broker_settings)["lead_score"] if s["lead_id"] == "GONE"] == scores_before
        assert _state_values(broker_settings)["GONE"] is None
    finally:
        worker.stop()
