"""The deployment files are checked by the tools that will read them, not by eye.

promtool checks the Prometheus config and runs the alert unit tests; every PromQL expression on a dashboard
goes through promtool too; every ClickHouse panel query runs against the migrated schema on embedded chDB;
docker compose and kubectl render their files where those clients exist. Metric names are cross-checked
against ``streams.metrics`` so an alert or a panel can never watch a metric nobody exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from streams.metrics import Metrics
from streams.settings import Settings, load_settings
from streams.topics import INPUT_PARTITIONS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
K8S = ROOT / "deploy" / "k8s"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
CONTRACT_TABLES = {"events", "lead_scores", "stage_transitions", "sla_events", "hot_leads", "content"}
# Tables beyond DESIGN §7's list that the dashboards may read (written by the same sink).
EXTRA_TABLES = {"sales_activities"}
JOBS = {"leadpulse-worker", "leadpulse-sink", "leadpulse-collector", "leadpulse-notifier"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run `bash .ci/system-deps.sh` (Debian package prometheus)")
    return path


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def exported_series() -> set[str]:
    """Every series name a leadpulse process can expose, with histogram/counter suffixes."""
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        base = family.name
        if family.type == "counter":
            names.add(f"{base}_total")
        elif family.type == "histogram":
            names.update({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
        else:
            names.add(base)
    return names


# --- Prometheus -------------------------------------------------------------------------------------------


def test_prometheus_config_and_rules_pass_promtool_checks() -> None:
    tool = promtool()
    config = run(tool, "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run(tool, "check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alert_unit_tests_pass_under_promtool() -> None:
    result = run(promtool(), "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"
    assert {
        "LeadpulseWorkerDown",
        "LeadpulseConsumerLagGrowing",
        "LeadpulseSinkFailing",
        "LeadpulseSinkStalled",
        "LeadpulseDeadLettersHigh",
        "LeadpulseNoEventsIngested",
        "LeadpulseHotLeadSLABreachesHigh",
    } <= names


def test_every_alert_names_a_severity_and_a_summary() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_scrape_jobs_are_the_ones_the_alerts_match() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["leadpulse-worker"] == ["worker:6066"]
    assert targets["leadpulse-sink"] == ["sink:6067"]
    assert targets["leadpulse-collector"] == ["collector:8088"]
    assert targets["leadpulse-notifier"] == ["notifier:6068"]
    settings = load_settings()
    assert (settings.web_port, settings.sink_port, settings.collector_port) == (6066, 6067, 8088)
    assert settings.notifier_port == 6068


def test_alerts_and_dashboards_only_use_metrics_that_are_exported() -> None:
    exported = exported_series()
    text = (PROMETHEUS / "alerts.yml").read_text() + "".join(p.read_text() for p in DASHBOARDS)
    used = set(re.findall(r"\bleadpulse_[a-z0-9_]+", text))
    assert used, "no leadpulse metric referenced at all"
    assert used - exported == set()


def test_every_dashboard_promql_expression_parses(tmp_path: Path) -> None:
    exprs = [
        target["expr"]
        for path in DASHBOARDS
        for panel in panels(json.loads(path.read_text()))
        for target in panel["targets"]
        if "expr" in target
    ]
    assert len(exprs) > 20
    # promtool parses PromQL when checking rules: wrap each panel query as a recording rule.
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(exprs)
    ]
    rule_file = tmp_path / "dashboard_exprs.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run(promtool(), "check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


def routes(route: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield route
    for child in route.get("routes", []):
        yield from routes(child)


def test_alertmanager_config_routes_every_alert_to_a_receiver_that_sends() -> None:
    """Prometheus only evaluates the rules: with no Alertmanager (compose had none) an alert shows on its
    /alerts page and reaches nobody. amtool, where installed, reads the file as Alertmanager does; the
    structure is checked either way: every route names a defined receiver, and every receiver sends
    somewhere (one without any ``*_configs`` drops what is routed to it without a word)."""
    config = load_yaml(ALERTMANAGER)
    known = {"global", "route", "receivers", "inhibit_rules", "templates", "time_intervals"}
    assert set(config) <= known, f"unknown top-level keys {sorted(set(config) - known)}"
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    assert len(receivers) == len(config["receivers"]), "duplicate receiver names"
    root = config["route"]
    assert not {"matchers", "match", "match_re"} & set(root), "the root route must take every alert"
    for route in routes(root):
        assert route.get("receiver", root["receiver"]) in receivers, route
    for name, receiver in receivers.items():
        configs = [c for key, value in receiver.items() if key.endswith("_configs") for c in value]
        assert configs, f"receiver {name} sends nowhere: alerts routed to it are dropped"
        for webhook in receiver.get("webhook_configs", []):
            assert urlsplit(webhook["url"]).scheme in {"http", "https"}, name
    amtool = shutil.which("amtool")
    if amtool is not None:
        result = run(amtool, "check-config", str(ALERTMANAGER))
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_prometheus_sends_alerts_to_the_compose_alertmanager() -> None:
    alertmanager = compose()["services"]["alertmanager"]
    assert alertmanager["image"].startswith("prom/alertmanager:")
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in alertmanager["command"])
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in alertmanager["volumes"]}
    assert mounts[flags["config.file"]] == "./deploy/alertmanager/alertmanager.yml"
    # Prometheus reaches it by service name on Alertmanager's default port (no --web.listen-address).
    assert "web.listen-address" not in flags
    assert "healthcheck" in alertmanager
    alerting = load_yaml(PROMETHEUS / "prometheus.yml")["alerting"]["alertmanagers"]
    targets = [target for am in alerting for static in am["static_configs"] for target in static["targets"]]
    assert targets == ["alertmanager:9093"]


# --- Grafana ----------------------------------------------------------------------------------------------


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    config = load_yaml(GRAFANA / "provisioning" / "datasources" / "leadpulse.yml")
    return {ds["uid"]: ds for ds in config["datasources"]}


def test_datasources_are_provisioned_for_prometheus_and_clickhouse() -> None:
    sources = provisioned_datasources()
    assert sources["prometheus"]["type"] == "prometheus"
    clickhouse = sources["clickhouse"]
    assert clickhouse["type"] == "grafana-clickhouse-datasource"
    assert clickhouse["jsonData"]["defaultDatabase"] == "leadpulse"
    assert clickhouse["jsonData"]["protocol"] == "http"
    # The password is never written into the file, only an environment reference.
    assert clickhouse["secureJsonData"]["password"].startswith("${")
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "leadpulse.yml")["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboards_parse_and_every_panel_has_a_datasource_and_a_query() -> None:
    sources = provisioned_datasources()
    uids = set()
    assert {p.stem for p in DASHBOARDS} >= {"pipeline", "content", "funnel", "sla"}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids, f"{path.name}: duplicate uid"
        uids.add(dashboard["uid"])
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels(dashboard):
            where = f"{path.name}: panel {panel['title']!r}"
            source = panel.get("datasource") or {}
            assert source.get("uid") in sources, f"{where}: unknown datasource {source}"
            assert panel["targets"], f"{where}: no query"
            for target in panel["targets"]:
                target_source = target.get("datasource", source)
                assert sources[target_source["uid"]]["type"] == target_source["type"], where
                query = target.get("expr") if target_source["type"] == "prometheus" else target.get("rawSql")
                assert query and query.strip(), f"{where}: empty query for {target_source['type']}"
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{where}: outside the 24-column grid"


def clickhouse_queries() -> list[tuple[str, str]]:
    return [
        (f"{path.name}: {panel['title']}", target["rawSql"])
        for path in DASHBOARDS
        for panel in panels(json.loads(path.read_text()))
        for target in panel["targets"]
        if "rawSql" in target
    ]


def test_clickhouse_panels_read_only_leadpulse_tables() -> None:
    queries = clickhouse_queries()
    assert len(queries) >= 15
    for where, sql in queries:
        tables = set(re.findall(r"\bleadpulse\.([a-z_]+)", sql))
        assert tables, f"{where}: tables must be qualified with database leadpulse"
        assert tables <= CONTRACT_TABLES | EXTRA_TABLES, f"{where}: unexpected tables {tables}"
        assert not re.search(r"\b(INSERT|ALTER|DROP|TRUNCATE|DELETE)\b", sql, re.IGNORECASE), where


def expand_grafana_macros(sql: str) -> str:
    """Replace the ClickHouse plugin's macros the way it does, for a fixed range."""
    sql = re.sub(
        r"\$__timeFilter\(([\w.]+)\)",
        r"(\1 >= toDateTime(1700000000) AND \1 <= toDateTime(1900000000))",
        sql,
    )
    sql = sql.replace("$__fromTime", "toDateTime(1700000000)").replace("$__toTime", "toDateTime(1900000000)")
    assert "$" not in sql, f"unexpanded macro or variable in: {sql}"
    return sql


def test_every_clickhouse_panel_query_runs_against_the_migrated_schema(clickhouse_dsn: str) -> None:
    from sinks.clickhouse import get_client
    from sinks.migrate import migrate

    client = get_client(load_settings(), dsn=clickhouse_dsn)
    migrate(client)
    failures = []
    for where, sql in clickhouse_queries():
        try:
            client.query(expand_grafana_macros(sql))
        except Exception as exc:  # collect every broken panel, not just the first
            failures.append(f"{where}: {exc}")
    assert failures == []


# --- docker compose and the image -------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(ROOT / "docker-compose.yml")
    return data


def test_compose_has_the_stack_wired_with_health_conditions() -> None:
    services = compose()["services"]
    assert {
        "kafka",
        "clickhouse",
        "prometheus",
        "grafana",
        "topics",
        "migrate",
        "worker",
        "sink",
        "collector",
        "notifier",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in ("worker", "sink", "collector", "topics", "migrate"):
        env = services[name]["environment"]
        assert env["LEADPULSE_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["LEADPULSE_CLICKHOUSE_DSN"] == "http://clickhouse:8123", name
        assert services[name]["build"] == ".", name
    assert services["topics"]["command"] == ["topics", "create"]
    assert services["migrate"]["command"] == ["migrate"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
            if condition["condition"] == "service_completed_successfully":
                assert services[dependency]["restart"] == "no", f"{dependency} must be one-shot"
    for name, port in (("worker", 6066), ("sink", 6067), ("collector", 8088), ("notifier", 6068)):
        assert services[name]["healthcheck"]["test"][-1] == f"http://127.0.0.1:{port}/ready", name
    assert "GF_PLUGINS_PREINSTALL" in services["grafana"]["environment"]
    assert "grafana-clickhouse-datasource" in services["grafana"]["environment"]["GF_PLUGINS_PREINSTALL"]


def test_compose_mounts_only_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_docker_compose_config_validates_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker client not installed: `docker compose config -q` not run")
    probe = run(docker, "compose", "version")
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[0]
        pytest.skip(f"docker compose plugin not installed ({reason}): `docker compose config -q` not run")
    result = run(docker, "compose", "-f", "docker-compose.yml", "config", "-q")
    assert result.returncode == 0, result.stderr


def test_image_runs_leadpulse_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and not users[-1].startswith(("root", "0")), "last USER must not be root"
    assert 'ENTRYPOINT ["leadpulse"]' in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "leadpulse/_native"} <= set(ignored)  # no host-built .so in the image


# --- Kubernetes -------------------------------------------------------------------------------------------


def k8s_documents() -> list[dict[str, Any]]:
    """The rendered manifests (kubectl kustomize when kubectl exists, else the raw files)."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        result = run(kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S))
        assert result.returncode == 0, result.stderr
        text = result.stdout
    else:
        skip = {"kustomization.yaml", "secret.example.yaml"}
        text = "\n---\n".join(p.read_text() for p in sorted(K8S.glob("*.yaml")) if p.name not in skip)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == kind}


def test_deployments_probe_health_and_readiness_and_set_resources() -> None:
    deployments = by_kind("Deployment")
    assert set(deployments) == JOBS
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["terminationGracePeriodSeconds"] >= 30, name
        for container in pod["containers"]:
            ports = {port["name"]: port["containerPort"] for port in container["ports"]}
            assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
            assert container["readinessProbe"]["httpGet"]["path"] == "/ready", name
            assert container["readinessProbe"]["httpGet"]["port"] in ports, name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
            assert container["args"] == [name.removeprefix("leadpulse-")]


def test_the_collector_keeps_serving_until_its_endpoint_is_removed() -> None:
    """At SIGTERM the collector closes its port at once, while Services may still route to the pod for a
    moment: the browser tracker does not retry, so without a preStop delay a rollout loses its events. The
    delay and the collector's own stop (LEADPULSE_COLLECTOR_STOP_GRACE_S, default 10 s, plus ~4 s) must fit
    the termination grace period."""
    collector = by_kind("Deployment")["leadpulse-collector"]["spec"]["template"]["spec"]
    (container,) = collector["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 3
    stop_grace = Settings.model_fields["collector_stop_grace_s"].default
    assert int(command[1]) + stop_grace + 5 <= collector["terminationGracePeriodSeconds"]


def pod_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = workload["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_credentials_come_from_the_secret_never_from_plain_values() -> None:
    secret_like = re.compile(r"PASSWORD|SECRET|WRITE_KEYS|USERNAME|USER$|HASH_KEY")
    for name, deployment in {**by_kind("Deployment"), **by_kind("Job")}.items():
        for container in pod_containers(deployment):
            for env in container.get("env", []):
                if secret_like.search(env["name"]):
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == "leadpulse-credentials", f"{name}: {env['name']}"
    for name, config in by_kind("ConfigMap").items():
        for key in config.get("data", {}):
            assert not secret_like.search(key), f"ConfigMap {name} holds {key}"


def test_workers_scale_on_lag_up_to_the_partition_count() -> None:
    scaled = by_kind("ScaledObject")
    assert set(scaled) == {"leadpulse-worker", "leadpulse-sink"}
    for name, obj in scaled.items():
        assert obj["spec"]["scaleTargetRef"]["name"] == name
        assert obj["spec"]["maxReplicaCount"] == INPUT_PARTITIONS, "more members than partitions sit idle"
        trigger = obj["spec"]["triggers"][0]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == name
        assert trigger["authenticationRef"]["name"] in by_kind("TriggerAuthentication")


def test_services_expose_the_ops_port_to_the_service_monitor() -> None:
    services = by_kind("Service")
    assert set(services) == JOBS, "Service names become Prometheus job names"
    monitor = next(iter(by_kind("ServiceMonitor").values()))
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoint_port = monitor["spec"]["endpoints"][0]["port"]
    for name, service in services.items():
        assert selector.items() <= service["metadata"]["labels"].items(), name
        assert endpoint_port in {port["name"] for port in service["spec"]["ports"]}, name
    assert any(port["port"] == 80 for port in services["leadpulse-collector"]["spec"]["ports"])


def test_service_monitor_and_rule_recipe_carry_the_release_label_kube_prometheus_stack_selects() -> None:
    """A kube-prometheus-stack Prometheus selects ServiceMonitors and PrometheusRules by ``release: <Helm
    release name>``; the API server accepts one without the label and Prometheus never uses it, so the
    ServiceMonitor shipped without any label was silently not scraped. Ship a default, the same one on the
    README's PrometheusRule recipe, and tell the user to adjust it."""
    monitor = by_kind("ServiceMonitor")["leadpulse"]
    release = monitor["metadata"].get("labels", {}).get("release")
    assert release, "no `release` label: kube-prometheus-stack's default selector ignores the ServiceMonitor"
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "Adjust the `release` label" in readme and "serviceMonitorSelector" in readme
    found = re.search(r"yq '(\{[^']*\"PrometheusRule\"[^']*)' deploy/prometheus/alerts\.yml", readme)
    assert found, "deploy/README.md: no yq recipe for the PrometheusRule"
    rule = json.loads(re.sub(r":\s*\.\s*\}$", ": null}", found.group(1)))
    assert rule["metadata"]["labels"]["release"] == release, "the rules would be ignored by that Prometheus"
    yq = shutil.which("yq")
    if yq is not None:  # run the recipe as the user will (either yq: both print YAML or JSON)
        result = run(yq, found.group(1), "deploy/prometheus/alerts.yml")
        assert result.returncode == 0, result.stderr
        assert yaml.safe_load(result.stdout)["spec"] == load_yaml(PROMETHEUS / "alerts.yml")


def test_rules_configmaps_are_generated_from_the_repository_files() -> None:
    config_maps = by_kind("ConfigMap")
    kustomization = load_yaml(K8S / "kustomization.yaml")
    generated = {gen["name"] for gen in kustomization["configMapGenerator"]}
    assert generated == {"leadpulse-rules", "leadpulse-alert-rules"}
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: generated ConfigMaps not rendered")
    alerts = next(cm for name, cm in config_maps.items() if name.startswith("leadpulse-alert-rules"))
    assert alerts["data"]["alerts.yml"] == (PROMETHEUS / "alerts.yml").read_text()
    rules = next(cm for name, cm in config_maps.items() if name.startswith("leadpulse-rules"))
    assert rules["data"]["rules.yaml"] == (ROOT / "agents" / "rules.default.yaml").read_text()


def test_setup_job_creates_topics_then_migrates_with_only_the_secrets_each_step_needs() -> None:
    """docs/operations.md names two one-shot commands per deploy; the Job runs them in compose's order."""
    jobs = by_kind("Job")
    assert len(jobs) == 1, sorted(jobs)
    job = next(iter(jobs.values()))
    image = {
        container["image"]
        for deployment in by_kind("Deployment").values()
        for container in pod_containers(deployment)
    }
    pod = job["spec"]["template"]["spec"]
    steps = pod_containers(job)
    assert [step["args"] for step in steps] == [["topics", "create"], ["migrate"]]
    assert [step["name"] for step in pod["initContainers"]] == ["topics"], "topics must finish first"
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["backoffLimit"] >= 1, "Kafka or ClickHouse may still be starting"
    assert "ttlSecondsAfterFinished" in job["spec"], "a finished Job would block re-applying the release"
    secrets = {}
    for step in steps:
        assert {step["image"]} == image, step["name"]
        assert step["securityContext"]["readOnlyRootFilesystem"] is True, step["name"]
        assert "memory" in step["resources"]["limits"], step["name"]
        mounted = {mount["mountPath"] for mount in step["volumeMounts"]}
        assert {"/tmp", "/var/lib/leadpulse"} <= mounted, f"{step['name']}: read-only root needs scratch"
        secrets[step["name"]] = {env["valueFrom"]["secretKeyRef"]["key"] for env in step.get("env", [])}
    assert secrets == {
        "topics": {"kafka-sasl-username", "kafka-sasl-password"},
        "migrate": {"clickhouse-user", "clickhouse-password"},
    }


def test_the_cluster_readme_records_every_migration_by_hand() -> None:
    """deploy/clickhouse/README.md's INSERT into schema_migrations must name every migration: it listed 1-4
    after 6 and 7 were added, so `leadpulse migrate` then ran their single-server DDL on the cluster (harmless
    only because every statement is IF NOT EXISTS)."""
    readme = (ROOT / "deploy" / "clickhouse" / "README.md").read_text()
    recorded = set(re.findall(r"\((\d+), '(\w+)', 'cluster'\)", readme))
    files = {
        (str(int(path.stem.split("_", 1)[0])), path.stem.split("_", 1)[1])
        for path in (ROOT / "sinks" / "migrations").glob("*.sql")
    }
    assert recorded == files
