"""Tables written to a pipe (scripts, CI logs, `| grep`) keep every cell whole."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.settings import Settings
from streams.topics import TOPICS
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


def test_topics_list_piped_shows_every_topic_name_in_full(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    env = leadpulse_env(
        kafka_bootstrap=broker.bootstrap, topic_prefix=broker_settings.topic_prefix, data_dir=tmp_path / "d"
    )
    env.pop("COLUMNS", None)
    done = subprocess.run(
        [*LEADPULSE, "topics", "list"], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert "…" not in done.stdout
    for spec in TOPICS:
        assert broker_settings.topic(spec.name) in done.stdout
