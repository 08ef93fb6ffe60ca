"""``leadpulse rescore FILE``: a history file is filtered by the broker's erasure log, as the topics are."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from agents.rescore import rescore
from agents.rules import DEFAULT_RULES_PATH, load_rules
from streams.broker import free_port
from streams.erasures import erasure_record, publish_erasure
from streams.settings import Settings
from tests.processes import LEADPULSE, leadpulse_env
from tests.unit.test_rescore import HISTORY, NOW

pytestmark = pytest.mark.integration


def _files(tmp_path: Path) -> tuple[Path, Path]:
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps({"type": schema, **event}) + "\n" for schema, event in HISTORY))
    new_rules = tmp_path / "new.yaml"
    new_rules.write_text(DEFAULT_RULES_PATH.read_text().replace("mql_threshold: 100", "mql_threshold: 90"))
    return history, new_rules


def _run(bootstrap: str, prefix: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    history, new_rules = _files(tmp_path)
    args = ["rescore", "--rules", str(new_rules), "--dry-run", "--format", "json", "--now", str(NOW)]
    env = leadpulse_env(kafka_bootstrap=bootstrap, topic_prefix=prefix)
    return subprocess.run(
        [*LEADPULSE, *args, str(history)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_history_file_leaves_out_leads_erased_with_forget(
    broker_settings: Settings, tmp_path: Path
) -> None:
    """DESIGN §10: L3 and the anonymous visitor A3 linked to it were forgotten; a file exported before that
    still holds both. Only the topics were filtered: the file's replay printed L3's stage and score again."""
    publish_erasure(broker_settings, erasure_record("L3", ["A3"], int(time.time() * 1000)))
    kept = [(s, e) for s, e in HISTORY if not {"L3", "A3"} & {e.get("lead_id"), e.get("anonymous_id")}]
    _, new_rules = _files(tmp_path)
    expected = rescore(kept, load_rules(None), load_rules(new_rules), NOW).to_dict()

    result = _run(broker_settings.bootstrap, broker_settings.topic_prefix, tmp_path)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected
    assert expected["leads"] == 2  # L1 and L2: L3 is in no replay
    erased = len(HISTORY) - len(kept)
    assert f"left out {erased} records of leads erased with `leadpulse forget`" in result.stderr
    assert "erasures not checked" not in result.stderr


def test_a_history_file_with_the_configured_broker_down_is_replayed_with_a_note(tmp_path: Path) -> None:
    """No broker answers at LEADPULSE_KAFKA_BOOTSTRAP: the report all the same, and one note naming it."""
    bootstrap = f"127.0.0.1:{free_port()}"
    result = _run(bootstrap, "", tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["leads"] == 3
    [note] = result.stderr.splitlines()
    assert f"erasures not checked: no broker at {bootstrap}" in note
