"""What the deployment files promise to ops, checked against the code that has to keep the promise.

test_deploy_static.py checks that each file is valid for the tool that reads it and that metric names
exist; this file checks the wiring between them: an alert for every way a component can vanish, and the
autoscaler measuring the lag the consumer groups really have.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.worker_clients import GROUP
from sinks.sink_loop import SINK_GROUP

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


def k8s_documents() -> list[dict[str, Any]]:
    skip = {"kustomization.yaml", "secret.example.yaml"}
    text = "\n---\n".join(p.read_text() for p in sorted(K8S.glob("*.yaml")) if p.name not in skip)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == kind}


def test_keda_measures_the_lag_the_consumer_groups_have() -> None:
    """KEDA reads the group's offsets itself; where the group has none it applies its own reset policy
    (default ``latest``: lag 1 per partition), so it must be the consumer's, or a backlog that the process
    reads from the start stays invisible to the autoscaler. Same broker and group as the code, too."""
    consumers = {  # group -> (the code's group name, the module that builds that consumer)
        "leadpulse-worker": (GROUP, ROOT / "agents" / "worker_clients.py"),
        "leadpulse-sink": (SINK_GROUP, ROOT / "sinks" / "sink_loop.py"),
    }
    bootstrap = by_kind("ConfigMap")["leadpulse-env"]["data"]["LEADPULSE_KAFKA_BOOTSTRAP"]
    scaled = by_kind("ScaledObject")
    assert set(scaled) == set(consumers)
    for name, (group, module) in consumers.items():
        resets = re.findall(r'auto_offset_reset="(\w+)"', module.read_text())
        assert len(resets) == 1, f"{module.name}: expected one consumer, found {resets}"
        trigger = scaled[name]["spec"]["triggers"][0]["metadata"]
        assert trigger["consumerGroup"] == group, name
        assert trigger["bootstrapServers"] == bootstrap, name
        assert trigger.get("offsetResetPolicy", "latest") == resets[0], name
