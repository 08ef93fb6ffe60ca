"""``leadpulse topics create`` against a broker where an input topic was auto-created with the wrong
partition count (a client reconnecting to a restarted in-memory broker first): an error naming the topic,
not "all existed"."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


def test_topics_create_names_a_topic_with_the_wrong_partition_count(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    prefix = broker_settings.topic_prefix + "fresh."  # the fixture's prefix already has the catalogue
    topic = prefix + "events.web_visits"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 4, 1)])  # what an auto-creating client leaves behind
    finally:
        admin.close()
    env = leadpulse_env(kafka_bootstrap=broker.bootstrap, topic_prefix=prefix, data_dir=tmp_path / "d")
    done = subprocess.run(
        [*LEADPULSE, "topics", "create"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1, done.stdout
    assert f"{topic} has 4 partition(s), the catalogue says 8" in done.stdout + done.stderr
    again = subprocess.run(  # the other topics were created all the same
        [*LEADPULSE, "topics", "create"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert "created 0 topic(s): (all existed)" in again.stdout + again.stderr
    assert again.returncode == 1  # and the wrong count is still named
