"""The worker's start asks the broker whether it is Tansu once: its erasure log (``streams.erasures``,
started first by ``agents.worker_process.serve_worker``) has asked already, and ``LeadWorker.run`` takes that
answer. Before stop 30 it asked again (``streams.broker.is_tansu``: one more kafka-python admin client, up to
30 s with the broker hung) for the same answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents import worker as worker_module
from agents import worker_clients
from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.broker import free_port
from streams.settings import load_settings

pytestmark = pytest.mark.unit


class KnownBroker:
    """An erasure log that has been read, as ``serve_worker`` hands it over: it found a Kafka broker."""

    tansu = False

    def is_erased(self, identity: str | None) -> bool:
        return False

    def drain_new(self) -> list[dict[str, Any]]:
        return []


class ProducerReached(Exception):
    """The worker's start went past its topic check to its producer: where this test stops it."""


def start_until_topics_checked(
    monkeypatch: pytest.MonkeyPatch, erasures: KnownBroker | None
) -> tuple[LeadWorker, list[object]]:
    """Run the worker's start through its topic check, up to its producer; the worker and the Tansu checks
    made. Stopped by raising where the producer is built: a stop set from the topic check could win the race
    with the check's own result (``finished_before_stop``) and leave ``tansu`` unset."""
    asked: list[object] = []
    monkeypatch.setattr(worker_clients, "is_tansu", lambda settings: asked.append(settings) or True)
    monkeypatch.setattr(worker_clients, "create_topics", lambda *args, **kwargs: None)

    def worker_producer(*args: object) -> None:
        raise ProducerReached

    monkeypatch.setattr(worker_module, "worker_producer", worker_producer)
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")  # nothing listens: never reached
    worker = LeadWorker(settings, load_rules(None), erasures=erasures)
    with pytest.raises(ProducerReached):
        asyncio.run(asyncio.wait_for(worker.run(asyncio.Event()), 20))
    return worker, asked


def test_the_worker_takes_its_erasure_logs_answer_and_does_not_ask_the_broker_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker, asked = start_until_topics_checked(monkeypatch, KnownBroker())
    assert asked == []
    assert worker.tansu is False  # the erasure log's answer, not the patched check's


def test_a_worker_without_an_erasure_log_asks_the_broker_once(monkeypatch: pytest.MonkeyPatch) -> None:
    worker, asked = start_until_topics_checked(monkeypatch, None)
    assert len(asked) == 1
    assert worker.tansu is True
