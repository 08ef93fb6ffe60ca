"""What the deployment files promise to ops, checked against the code that has to keep the promise.

test_deploy_static.py checks that each file is valid for the tool that reads it and that metric names
exist; this file checks the wiring between them: an alert for every way a component can vanish, the
autoscaler measuring the lag the consumer groups really have, every LEADPULSE_* variable a manifest sets
being a setting the code knows and accepts, every container command being a CLI command, and every label
an alert or a panel selects, groups by or shows being one the code exports, with a value it sets.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from prometheus_client import CollectorRegistry

from agents.notifier_group import GROUP_ID as NOTIFIER_GROUP
from agents.worker_clients import GROUP
from leadpulse.cli import app
from sinks.sink_loop import SINK_GROUP
from streams.metrics import SLA_LEVELS, SLA_NAMES, Metrics
from streams.settings import ENV_PREFIX, Settings, load_settings
from streams.topics import TOPICS

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


def test_every_alert_has_a_description_and_a_runbook_row() -> None:
    """alerts.yml sends whoever is paged to docs/operations.md ("Alerts"): each alert needs its row there,
    saying what it means and where to look first, and a description in the notification itself."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split("### Alerts", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `(Leadpulse\w+)` \|", table, re.MULTILINE))
    names = {rule["alert"] for rule in alert_rules()}
    assert names - rows == set(), "alerts without a runbook row in docs/operations.md"
    assert rows - names == set(), "runbook rows for alerts that no longer exist"
    for rule in alert_rules():
        assert len(rule["annotations"].get("description", "")) > 20, rule["alert"]


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


# --- settings -------------------------------------------------------------------------------------------

# What each process cannot run without (beyond the broker, which every one needs), on Kubernetes.
REQUIRED = {
    "leadpulse-worker": set(),
    "leadpulse-sink": {"LEADPULSE_CLICKHOUSE_DSN", "LEADPULSE_EMAIL_HASH_KEY"},
    "leadpulse-collector": {"LEADPULSE_WRITE_KEYS"},
    "leadpulse-notifier": {"LEADPULSE_WEBHOOK_URLS", "LEADPULSE_WEBHOOK_SECRET"},
}


def image_env() -> dict[str, str]:
    """The ``ENV`` of the Dockerfile's final stage (``KEY=value`` pairs, backslash continuations)."""
    final = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1].replace("\\\n", " ")
    return dict(re.findall(r"\b([A-Z][A-Z0-9_]*)=(\S+)", "\n".join(re.findall(r"^ENV (.*)$", final, re.M))))


def container_env(workload: dict[str, Any], config_maps: dict[str, dict[str, Any]]) -> dict[str, str]:
    """LEADPULSE_* variables one workload's containers get, secrets with secret.example.yaml's values."""
    example = load_yaml(K8S / "secret.example.yaml")
    secrets = {example["metadata"]["name"]: example["stringData"]}
    env = {k: v for k, v in image_env().items() if k.startswith(ENV_PREFIX)}
    pod = workload["spec"]["template"]["spec"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        for source in container.get("envFrom", []):
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def compose_env() -> dict[str, dict[str, str]]:
    """LEADPULSE_* variables of each compose service, ``${VAR:-default}`` read as its default."""
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    return {
        name: {
            key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
            for key, value in (service.get("environment") or {}).items()
            if key.startswith(ENV_PREFIX)
        }
        for name, service in services.items()
    }


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a process with exactly ``env`` would load them (JSON fields parsed as from the env)."""
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(f"{ENV_PREFIX}DATA_DIR", str(ROOT / ".leadpulse-never-created"))
    return load_settings()


def test_every_leadpulse_variable_set_for_a_process_is_a_setting_it_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings ignore unknown ``LEADPULSE_*`` variables (``extra="ignore"``), so a misspelt one in a
    manifest is silently the default; and a value they refuse (a SASL mechanism spelt as KEDA spells it)
    would stop every pod at start. Both are caught here, not at the rollout."""
    known = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    config_maps = by_kind("ConfigMap")
    workloads = {**by_kind("Deployment"), **by_kind("Job")}
    environments = {f"k8s {name}": container_env(w, config_maps) for name, w in workloads.items()}
    environments |= {f"compose {name}": env for name, env in compose_env().items() if env}
    environments["Dockerfile"] = {k: v for k, v in image_env().items() if k.startswith(ENV_PREFIX)}
    for where, env in environments.items():
        assert set(env) <= known, f"{where}: unknown settings {sorted(set(env) - known)}"
        settings_from(env, monkeypatch)  # raises SettingsError naming the variable
    assert len(environments) >= 12


def test_each_process_gets_the_settings_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kubernetes Deployments and the long-lived compose services: a reachable ops port, the real broker,
    and what each process refuses to start without (compose's notifier has no receiver on purpose)."""
    config_maps = by_kind("ConfigMap")
    deployments = by_kind("Deployment")
    assert set(deployments) == set(REQUIRED)
    image = {k: v for k, v in image_env().items() if k.startswith(ENV_PREFIX)}
    environments = {name: container_env(deployment, config_maps) for name, deployment in deployments.items()}
    composed = compose_env()
    environments |= {f"compose {job}": image | composed[job.removeprefix("leadpulse-")] for job in REQUIRED}
    for where, env in environments.items():
        required = REQUIRED.get(where, set()) | {f"{ENV_PREFIX}KAFKA_BOOTSTRAP"}
        assert required <= set(env), f"{where}: missing {sorted(required - set(env))}"
        settings = settings_from(env, monkeypatch)
        # Probes and scrapes come from the pod IP or the service name: a process on loopback is unreachable.
        assert settings.web_host == "0.0.0.0", where
        assert not settings.embedded_broker, where
        if where.endswith("sink"):
            assert not settings.embedded_clickhouse and not settings.default_email_hash_key, where


# What each command's code reads beyond the broker: ClickHouse credentials only where ClickHouse is opened
# (sinks/clickhouse.py get_client: the sink, migrate, and report/sql/forget run by hand in the sink's
# container), the email-hash key only in the sink (sinks/sink_loop.py), the write keys only in the collector,
# the webhook targets and their secret only in the notifier. Kafka SASL (Kubernetes only) in all but migrate.
CREDENTIALS = {
    "worker": set(),
    "sink": {"CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD", "EMAIL_HASH_KEY"},
    "collector": {"WRITE_KEYS"},
    "notifier": {"WEBHOOK_URLS", "WEBHOOK_SECRET"},
    "topics": set(),
    "migrate": {"CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"},
}
SECRET_LIKE = re.compile(r"PASSWORD|SECRET|WRITE_KEYS|USERNAME|USER$|HASH_KEY|WEBHOOK_URLS")


def test_each_process_gets_only_the_credentials_its_code_reads() -> None:
    """Least privilege, on compose as on Kubernetes: compose gave the worker, collector, notifier and
    ``topics`` the ClickHouse password and the email-hash key, which they never use, so a leak from any of
    them (``docker inspect``, a crash dump, a debug shell) gave away the database. Missing ones fail too."""
    composed = compose_env()
    kubernetes = {
        name.removeprefix("leadpulse-"): deployment["spec"]["template"]["spec"]["containers"]
        for name, deployment in by_kind("Deployment").items()
    }
    kubernetes |= {
        container["name"]: [container]
        for job in by_kind("Job").values()
        for container in [
            *job["spec"]["template"]["spec"]["initContainers"],
            *job["spec"]["template"]["spec"]["containers"],
        ]
    }
    assert set(kubernetes) == set(CREDENTIALS)
    for name, wanted in CREDENTIALS.items():
        given = {key.removeprefix(ENV_PREFIX) for key in composed[name] if SECRET_LIKE.search(key)}
        assert given == wanted, (
            f"compose {name}: extra {sorted(given - wanted)}, missing {sorted(wanted - given)}"
        )
        refs = {var["name"].removeprefix(ENV_PREFIX) for c in kubernetes[name] for var in c.get("env", [])}
        kafka = {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"} if name != "migrate" else set()
        assert refs == wanted | kafka, f"k8s {name}: extra {sorted(refs - wanted - kafka)}"


# --- labels ---------------------------------------------------------------------------------------------

# Label values the code sets, for the labels whose values an alert or a panel may name.
KNOWN_VALUES = {
    "group": {GROUP, SINK_GROUP, NOTIFIER_GROUP},
    "sla": set(SLA_NAMES),
    "level": set(SLA_LEVELS),
    "job": JOBS | {"prometheus"},
    "topic": {spec.name for spec in TOPICS},
    "source_topic": {spec.name for spec in TOPICS},
}
TARGET_LABELS = {"job", "instance"}


def promql_expressions() -> list[tuple[str, str, str | None]]:
    """(where, expression, legend) of every alert and every Prometheus panel."""
    found: list[tuple[str, str, str | None]] = [(rule["alert"], rule["expr"], None) for rule in alert_rules()]
    for path in sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")):
        stack = list(json.loads(path.read_text())["panels"])
        while stack:
            panel = stack.pop()
            stack.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                if "expr" in target:
                    where = f"{path.name}: {panel['title']}"
                    found.append((where, target["expr"], target.get("legendFormat")))
    return found


def exported_labels() -> dict[str, set[str]]:
    """Series name -> the label names a leadpulse process gives it (histogram series also get ``le``)."""
    metrics = Metrics(CollectorRegistry(), process_metrics=True)
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    for collector in {id(c): c for c in metrics.registry._names_to_collectors.values()}.values():
        declared = set(getattr(collector, "_labelnames", ()))
        for name in metrics.registry._get_names(collector):
            names.setdefault(name, set()).update(declared | ({"le"} if name.endswith("_bucket") else set()))
    return names


def test_alerts_and_panels_use_only_labels_and_values_the_code_exports() -> None:
    """A selector on a label the series does not have, or on a value the code never sets, matches nothing:
    the alert never fires, the panel is empty, and neither says so. Same for ``by (...)`` and legends."""
    exported = exported_labels()
    series = re.compile(r"\b((?:leadpulse|process|python)_[a-z0-9_]+)(?:\{([^}]*)\})?")
    for where, expr, legend in promql_expressions():
        used = series.findall(expr)
        assert used or "ALERTS" in expr or "up{" in expr, where
        available = set(TARGET_LABELS)
        for name, selector in used:
            assert name in exported, f"{where}: {name} is not exported"
            available |= exported[name]
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector):
                assert label in exported[name] | TARGET_LABELS, f"{where}: {name} has no label {label}"
                if op in {"=", "!="} and label in KNOWN_VALUES:
                    assert value in KNOWN_VALUES[label], f"{where}: {label}={value!r} is never exported"
        grouped = {label.strip() for by in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in by.split(",")}
        grouped.discard("")
        assert grouped <= available, f"{where}: by {sorted(grouped - available)} not on these series"
        shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend or ""))
        if used and grouped:
            assert shown <= grouped, f"{where}: legend {sorted(shown - grouped)} is aggregated away"


# --- commands -------------------------------------------------------------------------------------------


def test_every_container_command_is_a_leadpulse_cli_command() -> None:
    """The image's entrypoint is ``leadpulse``; a compose ``command`` or a container's ``args`` that names no
    command (a renamed verb, ``topic create``) crash-loops with a usage error that no alert names."""
    cli = typer.main.get_command(app)
    invocations = {
        f"compose {name}": service["command"]
        for name, service in load_yaml(ROOT / "docker-compose.yml")["services"].items()
        if service.get("build") == "."
    }
    for name, workload in {**by_kind("Deployment"), **by_kind("Job")}.items():
        pod = workload["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            assert container["image"].startswith("leadpulse:"), name
            invocations[f"k8s {name}/{container['name']}"] = container["args"]
    assert len(invocations) >= 12
    for where, args in invocations.items():
        command: Any = cli  # typer's own (vendored) click: a group is what has subcommands
        words = list(args)
        while hasattr(command, "list_commands"):
            assert words, f"{where}: {args} stops at a group"
            context = command.make_context(command.name, [], resilient_parsing=True)
            sub = command.get_command(context, words[0])
            assert sub is not None, f"{where}: {words[0]!r} is not a command of {command.name!r}"
            command, words = sub, words[1:]
        command.make_context(command.name, words)  # raises on an unknown option or argument


def test_autoscaled_deployments_leave_the_replica_count_to_the_autoscaler() -> None:
    """A Deployment's ``spec.replicas`` is applied again with every ``kubectl apply``: workers KEDA had
    scaled to 6 for a backlog went back to 2 at the next release (a rebalance, every worker reloading its
    states) until KEDA raised them again (another). Kubernetes' advice for autoscaled workloads: leave the
    field out."""
    scaled = {obj["spec"]["scaleTargetRef"]["name"] for obj in by_kind("ScaledObject").values()}
    scaled |= {hpa["spec"]["scaleTargetRef"]["name"] for hpa in by_kind("HorizontalPodAutoscaler").values()}
    deployments = by_kind("Deployment")
    assert scaled == {"leadpulse-worker", "leadpulse-sink", "leadpulse-collector"}
    for name in scaled:
        assert "replicas" not in deployments[name]["spec"], f"{name}: replicas fights its autoscaler"


def test_disruption_budgets_let_a_drain_evict_pods_that_are_not_ready() -> None:
    """A sink is not ready while ClickHouse is away (RELIABILITY.md 2b), a collector while the broker is
    unreachable at start, and KEDA adds sinks while the lag grows. Under the default policy
    (IfHealthyBudget) a budget already spent by those unready pods refuses to evict them, so a node drain
    hangs for the whole outage although evicting them costs nothing."""
    budgets = by_kind("PodDisruptionBudget")
    assert set(budgets) == {"leadpulse-worker", "leadpulse-sink", "leadpulse-collector"}
    for name, budget in budgets.items():
        assert budget["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", name


def test_scrape_target_labels_do_not_collide_with_exported_labels() -> None:
    """A target label that a series also carries renames the series' own to ``exported_<name>``: queries
    written against the code's label read the target's instead, and compose and Kubernetes (whose
    ServiceMonitor adds no such label) disagree."""
    exported = set().union(*exported_labels().values())
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            clashes = set(static.get("labels", {})) & exported
            assert clashes == set(), f"{job['job_name']}: target labels {sorted(clashes)} hide the series'"
    assert set(config["global"].get("external_labels", {})).isdisjoint(exported)


def test_promql_functions_fit_the_metric_types() -> None:
    """rate()/increase() on a gauge and delta() on a counter return numbers that mean nothing (a counter's
    reset reads as a huge drop), and histogram_quantile() without ``le`` in its grouping returns nothing."""
    metrics = Metrics(CollectorRegistry(), process_metrics=True)
    kinds: dict[str, str] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            kinds[sample.name] = "gauge" if family.type in {"gauge", "info"} else "counter"
    for collector in {id(c): c for c in metrics.registry._names_to_collectors.values()}.values():
        kind = getattr(collector, "_type", None)  # labelled families have no samples before their first use
        for name in metrics.registry._get_names(collector) if kind else ():
            kinds[name] = "gauge" if kind == "gauge" else "counter"
    for where, expr, _ in promql_expressions():
        for function, name in re.findall(r"\b(i?rate|increase|delta|deriv|idelta)\(\s*([a-z_:]+)", expr):
            wanted = "gauge" if function in {"delta", "deriv", "idelta"} else "counter"
            assert kinds[name] == wanted, f"{where}: {function}() over the {kinds[name]} {name}"
        groupings = re.findall(r"histogram_quantile\([^,]+,\s*\w+\s+by\s*\(([^)]*)\)", expr)
        assert len(groupings) == expr.count("histogram_quantile"), f"{where}: a quantile not summed by le"
        for grouping in groupings:
            assert "le" in {label.strip() for label in grouping.split(",")}, f"{where}: quantile without le"
