"""``leadpulse rescore ... inputs``: the dry-run replays history read from the real broker's input topics."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from agents.rescore import rescore
from agents.rules import DEFAULT_RULES_PATH, load_rules
from schemas.registry import default_registry
from streams.erasures import erasure_record, publish_erasure
from streams.producer import Producer
from streams.reader import read_topic
from streams.settings import Settings
from tests.processes import LEADPULSE, leadpulse_env
from tests.unit.builders import HOUR, MIN, T0, download
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
    registry = default_registry()
    # records the worker dead-letters, written by some other Kafka client: not history
    stranger = download(lead="L9", t=T0 + MIN, asset="whitepaper", event_id="wrong-topic")[1]
    future = download(lead="L9", t=int(time.time() * 1000) + 30 * HOUR, event_id="future")[1]
    nobody = download(lead=None, t=T0 + MIN, event_id="nobody")[1]
    with Producer(broker_settings) as producer:
        for schema, record in HISTORY:
            producer.send(schema, record)
        poison = [
            ("events.web_visits", registry.encode("download", stranger)),
            ("events.downloads", registry.encode("download", future)),
            ("events.downloads", registry.encode("download", nobody)),
        ]
        for topic, value in poison:
            producer.send_encoded(broker_settings.topic(topic), b"L9", value).get(timeout=30)
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
    )  # no history argument, as DESIGN §3 writes the command: the input topics

    assert result.returncode == 0, result.stderr
    assert "skipped 3 records the worker dead-letters" in result.stderr
    assert "a download record on a topic of web_visit records" in result.stderr
    assert "event_time: is 30.0 h in the future" in result.stderr
    assert "lead_id: one of lead_id or anonymous_id" in result.stderr
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
    # the deployment's prefixed name is the same topic (as `produce --topic` takes it): refused before
    prefixed = broker_settings.topic("events.web_visits")
    result = _run(broker_settings, "--rules", str(DEFAULT_RULES_PATH), "--dry-run", prefixed)
    assert result.returncode == 0, result.stderr


def test_rescore_leaves_out_leads_erased_with_forget(broker_settings: Settings, tmp_path: Path) -> None:
    """DESIGN §10: a replay does not bring an erased lead back; a dry run reads history as a replay would."""
    with Producer(broker_settings) as producer:
        for schema, record in HISTORY:
            producer.send(schema, record)
    publish_erasure(broker_settings, erasure_record("L1", [], int(time.time() * 1000)))
    new_rules = tmp_path / "new.yaml"
    new_rules.write_text(DEFAULT_RULES_PATH.read_text().replace("mql_threshold: 100", "mql_threshold: 90"))
    kept = [(schema, record) for schema, record in HISTORY if record.get("lead_id") != "L1"]
    expected = rescore(kept, load_rules(None), load_rules(new_rules), NOW).to_dict()

    result = _run(
        broker_settings, "--rules", str(new_rules), "--dry-run", "--format", "json", "--now", str(NOW)
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected
    assert "L1" not in result.stdout
    erased = len(HISTORY) - len(kept)
    assert f"left out {erased} records of leads erased with `leadpulse forget`" in result.stderr
