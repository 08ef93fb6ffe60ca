"""``leadpulse rescore ... inputs``: the dry-run replays history read from the real broker's input topics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agents.rescore import rescore
from agents.rules import DEFAULT_RULES_PATH, load_rules
from streams.producer import Producer
from streams.reader import read_topic
from streams.settings import Settings
from tests.processes import LEADPULSE, leadpulse_env
from tests.unit.test_rescore import HISTORY, NOW

pytestmark = pytest.mark.integration


def _run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = leadpulse_env(kafka_bootstrap=settings.bootstrap, topic_prefix=settings.topic_prefix)
    return subprocess.run(
        [*LEADPULSE, "rescore", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_rescore_from_the_input_topics_reports_what_the_pure_replay_reports(
    broker_settings: Settings, tmp_path: Path
) -> None:
    with Producer(broker_settings) as producer:
        for schema, record in HISTORY:
            producer.send(schema, record)
    new_rules = tmp_path / "new.yaml"
    new_rules.write_text(DEFAULT_RULES_PATH.read_text().replace("mql_threshold: 100", "mql_threshold: 90"))
    expected = rescore(HISTORY, load_rules(None), load_rules(new_rules), NOW).to_dict()

    result = _run(
        broker_settings,
        "--rules",
        str(new_rules),
        "--dry-run",
        "--format",
        "json",
        "--now",
        str(NOW),
        "inputs",
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected
    assert expected["stage_changes"] == 1  # the scenario does change someone
    # a dry run emits nothing
    assert list(read_topic(broker_settings, broker_settings.topic("leads.scores"), idle_ms=300)) == []


def test_rescore_names_the_problem_when_the_history_is_neither_a_file_nor_a_topic(
    broker_settings: Settings,
) -> None:
    result = _run(broker_settings, "--rules", str(DEFAULT_RULES_PATH), "--dry-run", "events.nope")
    assert result.returncode == 2
    assert "neither a file nor an input topic" in result.stderr and "events.web_visits" in result.stderr
