"""Secrets configured through LEADPULSE_* never show up where people and machines read: process logs,
``/metrics``, ``/health``, ``/ready``, and the CLI's error output (DESIGN §10, STYLE 13).

The collector, sink, notifier and worker run as real processes with every secret setting set, are exercised
(accepted and refused collector requests, a webhook delivery failing against a closed port, a hot lead
through the notifier), then everything they printed or served is searched for each secret value.
Kafka SASL is configured but unused here: the local broker (Tansu) speaks PLAINTEXT only.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.producer import Producer
from streams.settings import Settings
from tests.processes import LEADPULSE, CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.integration

SECRETS = {
    "kafka_sasl_password": "sasl-Pw-5e9a1c",
    "clickhouse_password": "ch-Pw-77b0d2",
    "webhook_secret": "wh-Secret-41f8aa",
    "email_hash_key": "email-Key-0c3d95",
    "write_key": "write-Key-b26e07",
}
TOKEN_IN_URL = "url-Token-9d1f3e"  # a token carried in a webhook URL (Slack-style)


def secret_env(broker: EmbeddedBroker, settings: Settings, tmp_path: Path, **ports: int) -> dict[str, str]:
    return leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=settings.topic_prefix,
        data_dir=tmp_path / "data",
        kafka_sasl_username="leadpulse",
        kafka_sasl_password=SECRETS["kafka_sasl_password"],
        clickhouse_user="leadpulse",
        clickhouse_password=SECRETS["clickhouse_password"],
        webhook_secret=SECRETS["webhook_secret"],
        email_hash_key=SECRETS["email_hash_key"],
        write_keys=json.dumps({"web": SECRETS["write_key"]}),
        webhook_urls=json.dumps([f"http://127.0.0.1:{free_port()}/hook?token={TOKEN_IN_URL}"]),
        webhook_max_attempts=2,
        webhook_backoff_base_s=0.05,
        log_level="DEBUG",
        **ports,
    )


def leaks(text: str) -> list[str]:
    values = [*SECRETS.values(), TOKEN_IN_URL]
    return [value for value in values if value in text]


def get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:  # /ready may answer 503: its body must not leak either
        return str(exc.read().decode(errors="replace"))


def post_events(port: int, key: str) -> int:
    event = {
        "type": "download",
        "event_id": f"dl-{key[:5]}-{time.time_ns()}",
        "event_time": int(time.time() * 1000) - 1000,
        "lead_id": "L-SECRET",
        "content_id": "demo",
        "asset_type": "demo_request",
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=json.dumps({"batch": [event]}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_no_secret_reaches_logs_metrics_health_or_ready(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    ports = {
        "collector_port": free_port(),
        "sink_port": free_port(),
        "web_port": free_port(),
    }
    notifier_port = free_port()
    env = secret_env(broker, broker_settings, tmp_path, **ports)
    procs = {
        "collector": CliProcess(["collector"], env, tmp_path / "collector.log"),
        "sink": CliProcess(["sink", "--batch-seconds", "0.2"], env, tmp_path / "sink.log"),
        "notifier": CliProcess(
            ["notifier", "--ops-port", str(notifier_port)], env, tmp_path / "notifier.log"
        ),
        "worker": CliProcess(["worker"], env, tmp_path / "worker.log"),
    }
    bases = {
        "collector": f"http://127.0.0.1:{ports['collector_port']}",
        "sink": f"http://127.0.0.1:{ports['sink_port']}",
        "notifier": f"http://127.0.0.1:{notifier_port}",
        "worker": f"http://127.0.0.1:{ports['web_port']}",
    }
    served: list[str] = []
    try:
        for name, base in bases.items():
            health = f"{base}/health"
            wait_until(lambda: http_ok(health), 90, f"{name} up", procs[name])  # noqa: B023
        assert post_events(ports["collector_port"], "wrong-key") == 401
        assert post_events(ports["collector_port"], SECRETS["write_key"]) in (200, 202)
        with Producer(broker_settings) as producer:  # a hot lead with an email: hashed by the sink
            producer.send(
                "lead_identified",
                {
                    "event_id": "id-secret",
                    "event_time": int(time.time() * 1000) - 5000,
                    "lead_id": "L-SECRET",
                    "source": "form",
                    "email": "cto@buyer.example",
                },
            )
        # The demo request makes L-SECRET hot: the notifier tries the closed webhook port and gives up.
        wait_until(
            lambda: "leadpulse_webhook_failures_total{" in get(f"{bases['notifier']}/metrics"),
            90,
            "a webhook delivery given up",
            procs["notifier"],
        )
        for base in bases.values():
            served += [get(f"{base}{path}") for path in ("/metrics", "/health", "/ready")]
    finally:
        for proc in procs.values():
            proc.stop()
    for name, proc in procs.items():
        assert leaks(proc.output()) == [], f"{name} log leaks a secret"
    for body in served:
        assert leaks(body) == []
    assert "leadpulse_webhook_failures_total" in "".join(served)  # the scrape did cover the failure path


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LEADPULSE, *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_errors_do_not_echo_secrets(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    env = secret_env(broker, broker_settings, tmp_path)
    # A settings validation error (another setting is wrong) while every secret is set.
    bad_port = cli({**env, "LEADPULSE_WEB_PORT": "80x"}, "sql", "SELECT 1")
    assert bad_port.returncode == 2 and "LEADPULSE_WEB_PORT" in bad_port.stderr
    assert leaks(bad_port.stdout + bad_port.stderr) == []
    # A ClickHouse server that is not there: the password travels in LEADPULSE_CLICKHOUSE_PASSWORD.
    closed = f"http://127.0.0.1:{free_port()}"
    for args in (("migrate",), ("sql", "SELECT 1"), ("forget", "L-1", "--yes")):
        failed = cli({**env, "LEADPULSE_CLICKHOUSE_DSN": closed}, *args)
        assert failed.returncode != 0, args
        assert leaks(failed.stdout + failed.stderr) == [], args


def test_a_password_inside_the_dsn_is_not_echoed(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    env = secret_env(broker, broker_settings, tmp_path)
    secret = SECRETS["clickhouse_password"]
    bad_scheme = cli({**env, "LEADPULSE_CLICKHOUSE_DSN": f"ftp://u:{secret}@h:1"}, "sql", "SELECT 1")
    unreachable = cli({**env, "LEADPULSE_CLICKHOUSE_DSN": f"http://u:{secret}@127.0.0.1:1"}, "migrate")
    assert bad_scheme.returncode == 2 and unreachable.returncode != 0
    for done in (bad_scheme, unreachable):  # neither stream: a CLI prints results on stdout
        assert secret not in done.stdout + done.stderr, done.args
