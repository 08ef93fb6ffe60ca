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
from streams.topics import TOPICS
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


def test_topics_create_on_the_embedded_broker_counts_the_topics_it_created(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    """Embedded mode reuses a broker already on the configured port (here the session's). The broker
    start used to create the catalogue first, so the command always said 'created 0 (all existed)'."""
    env = leadpulse_env(
        broker_host=broker.host,
        broker_port=broker.port,
        topic_prefix=broker_settings.topic_prefix + "embedded.",
        data_dir=tmp_path / "d",
    )

    def create() -> str:
        args = [*LEADPULSE, "topics", "create"]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr  # the report is on stderr, with the errors

    first = create()
    assert f"created {len(TOPICS)} topic(s): " in first, first
    assert "created 0 topic(s): (all existed)" in create()


@pytest.mark.parametrize(
    ("setting", "reported"), [(None, "1 (asked: the broker's default;"), ("3", "3 (asked: 3;")]
)
def test_topics_create_asks_for_the_configured_replication_factor(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path, setting: str | None, reported: str
) -> None:
    """Topics were created with one replica whatever the cluster: on production Kafka the state changelog
    had no copy. Default: the broker's own default (Tansu answers 1 for it); set: what is set (Tansu, one
    node, reports what it was asked)."""
    prefix = broker_settings.topic_prefix + f"rf{setting or 'default'}."
    env = leadpulse_env(kafka_bootstrap=broker.bootstrap, topic_prefix=prefix, data_dir=tmp_path / "d")
    if setting:
        env["LEADPULSE_TOPIC_REPLICATION_FACTOR"] = setting
    done = subprocess.run(
        [*LEADPULSE, "topics", "create"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"replication factor: {reported} LEADPULSE_TOPIC_REPLICATION_FACTOR)" in done.stdout + done.stderr
