"""``streams.reader.read_topic`` on a broker slow to answer its first fetch still reads the topic to its end.

A partition whose high watermark was still unknown (no fetch response yet) counted as drained, so a read
whose first fetch took longer than ``idle_ms`` returned nothing at all, silently: a CI run read an empty
``leads.hot`` that held 8 hot leads (tests/integration/test_worker_backlog_order.py). The reader backs
`leadpulse forget` (profile links), `rescore` from a topic and the replay tools, not only tests. Here the
broker is real and the delay is injected: ``KafkaConsumer.poll`` returns nothing for its first second,
without fetching, as a broker under load does.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kafka import KafkaConsumer

from streams.producer import Producer
from streams.reader import read_topic
from streams.settings import Settings
from tests.unit.builders import visit

pytestmark = pytest.mark.integration

SLOW_S = 1.0


def test_a_first_fetch_slower_than_the_idle_time_still_reads_every_record(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = int(time.time() * 1000)
    with Producer(broker_settings) as producer:
        for i in range(5):
            producer.send(*visit(f"L{i}", now, event_id=f"v{i}"))
    real_poll = KafkaConsumer.poll
    first: dict[int, float] = {}

    def slow_poll(consumer: KafkaConsumer, *args: Any, **kwargs: Any) -> Any:
        started = first.setdefault(id(consumer), time.monotonic())
        if time.monotonic() - started < SLOW_S:
            time.sleep(0.2)  # no answer yet: nothing fetched, no high watermark known
            return {}
        return real_poll(consumer, *args, **kwargs)

    monkeypatch.setattr(KafkaConsumer, "poll", slow_poll)
    read = list(read_topic(broker_settings, broker_settings.topic("events.web_visits"), idle_ms=300))
    assert sorted(d.record["event_id"] for d in read) == [f"v{i}" for i in range(5)]
