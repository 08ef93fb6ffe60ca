"""What the deployment files promise to ops, checked against the code that has to keep the promise.

test_deploy_static.py checks that each file is valid for the tool that reads it and that metric names
exist; this file checks the wiring between them, starting with an alert for every way a component can
vanish.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
K8S = ROOT / "deploy" / "k8s"
JOBS = {"leadpulse-worker", "leadpulse-sink", "leadpulse-collector", "leadpulse-notifier"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_leadpulse_job_alerts_when_its_target_is_missing() -> None:
    """``up{job=...} == 0`` needs a target: with none discovered (a Deployment scaled to 0, a Service that
    lost its scrape label) the series is absent and the down alerts stay silent, so absent() must cover it."""
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    for job in JOBS:
        assert f'absent(up{{job="{job}"}})' in exprs, f"no alert fires when {job} has no target"
