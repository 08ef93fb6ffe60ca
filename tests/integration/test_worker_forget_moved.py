"""What the worker remembers of failures is forgotten for partitions that move to another worker on a
rebalance: records the core raised for (``failed_in_core``) and leads the SLA scan failed for
(``scan_failed``).
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from agents import worker_sla_scan
from agents.rules import load_rules
from agents.worker import LeadWorker
from agents.worker_rebalance import WorkerRebalance
from streams.broker import create_topics, is_tansu, kafka_client_config
from streams.settings import Settings
from streams.topics import TOPICS

pytestmark = pytest.mark.integration


def _rebalanced_to(settings: Settings, worker: LeadWorker, kept: int) -> None:
    """Run the worker's real rebalance listener (its changelog restore against the broker) for a new
    assignment of partition ``kept`` of every input topic, as the consumer calls it after a rebalance.

    Why the listener and not a second worker joining: an entry of ``failed_in_core`` lives only between the
    failed pass of a batch and the commit of the next one (milliseconds), so a real rebalance cannot be
    timed to land in between; the listener is where the assignment changes."""
    create_topics(settings.bootstrap, settings.topic_prefix, TOPICS, kafka_client_config(settings))
    worker.tansu = is_tansu(settings)
    assigned = {TopicPartition(topic, kept) for topic in worker.input_topics}
    asyncio.run(WorkerRebalance(worker).on_partitions_assigned(assigned))
    assert worker.restored_once and worker.store.partitions == {kept}


def test_records_the_core_raised_for_are_forgotten_when_their_partition_moves_away(
    broker_settings: Settings,
) -> None:
    """``failed_in_core`` was pruned only when the worker committed past an entry, which it never does for
    a partition that moved to another worker (its commit refused): the entries stayed for the life of the
    process. Entries of the partitions still owned are kept (their records are dead-lettered when read
    again)."""
    worker = LeadWorker(broker_settings, load_rules(None))
    visits = broker_settings.topic("events.web_visits")
    worker.failed_in_core = {
        (visits, 0, 7): RuntimeError("injected: on a partition kept"),
        (visits, 5, 9): RuntimeError("injected: on a partition that moves away"),
    }
    _rebalanced_to(broker_settings, worker, kept=0)
    assert set(worker.failed_in_core) == {(visits, 0, 7)}


def test_leads_the_sla_scan_failed_for_are_forgotten_when_their_partition_moves_away(
    broker_settings: Settings,
) -> None:
    """The same for ``scan_failed``: a lead of a partition now owned by another worker is that worker's
    business (it scans it on its own state); a lead of a partition kept keeps its back-off."""
    worker = LeadWorker(broker_settings, load_rules(None))
    worker_sla_scan._failed(worker, b"L-on-kept", 0)
    worker_sla_scan._failed(worker, b"L-on-moved", 5)
    _rebalanced_to(broker_settings, worker, kept=0)
    assert b"L-on-kept" in worker.scan_failed
    assert b"L-on-moved" not in worker.scan_failed
