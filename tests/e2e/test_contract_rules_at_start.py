"""DESIGN §1/§8: the rules are one YAML file, **validated at start** (docs/scoring.md: the error names the
file and the key path), through ``leadpulse worker`` as a deployment runs it.

Why: the loader's errors are unit-tested (``test_rules.py``) and ``rescore``'s through its CLI, but nothing
ran the worker with a bad ``LEADPULSE_RULES``. A worker that loaded the rules after joining its group (or on
its first record) would start, look healthy to an orchestrator and fail later, or retry a broker for ever.
The broker here is a closed port, so a worker that got as far as Kafka would not answer within the timeout.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        ("version: 1\nstages:\n  mql_threshold: 100\n  mql_treshold: 5\n", "stages.mql_treshold"),
        ("version: 1\nstages:\n  mql_threshold: 0\n", "stages.mql_threshold"),
    ],
    ids=["misspelt key", "everyone hot"],
)
def test_worker_refuses_a_bad_rules_file_at_start_naming_file_and_key(
    tmp_path: Path, text: str, key_path: str
) -> None:
    rules = tmp_path / "team-rules.yaml"
    rules.write_text(text)
    env = leadpulse_env(
        rules=rules,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",  # nothing listens: the rules must be judged first
        data_dir=tmp_path / "data",
        web_port=0,
    )
    done = subprocess.run(
        [*LEADPULSE, "worker"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "team-rules.yaml" in done.stderr and key_path in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
