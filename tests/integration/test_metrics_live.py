"""Metrics of running processes move by the expected amounts, and a real Prometheus server scrapes them."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from leadpulse.live_view import Samples, total
from leadpulse.live_view import scrape as scrape_url
from streams.broker import EmbeddedBroker, free_port
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker import profile, start_worker
from tests.processes import wait_until

pytestmark = pytest.mark.integration


def scrape(port: int) -> Samples:
    """Every sample of a process's /metrics; an unreachable endpoint fails the test rather than reading 0."""
    samples = scrape_url(f"http://127.0.0.1:{port}/metrics")
    assert samples, f"no metrics from 127.0.0.1:{port}"
    return samples


def test_worker_metrics_count_the_scripted_run(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    worker, port = start_worker(broker_settings, broker, tmp_path / "worker.log")
    try:
        before = scrape(port)
        assert total(before, "leadpulse_events_consumed_total") == 0
        with Producer(broker_settings) as producer:
            for i in range(5):  # 5 profiles, 3 demo requests (hot), 2 blog visits, 1 poison record
                producer.send("lead_identified", profile(f"M{i}", now))
            for i in range(3):
                producer.send(
                    "download",
                    {
                        "event_id": f"m-demo-{i}",
                        "event_time": now - 60_000,
                        "lead_id": f"M{i}",
                        "source": "web",
                        "content_id": "demo",
                        "asset_type": "demo_request",
                    },
                )
            for i in range(2):
                producer.send(
                    "web_visit",
                    {
                        "event_id": f"m-blog-{i}",
                        "event_time": now - 30_000,
                        "lead_id": f"M{3 + i}",
                        "source": "web",
                        "url": "https://x.example/blog/1",
                        "page_category": "blog",
                    },
                )
            producer.send_encoded(broker_settings.topic("events.downloads"), b"M0", b"\x00poison")
        wait_until(
            lambda: total(scrape(port), "leadpulse_events_consumed_total") >= 11, 60, "11 consumed", worker
        )
        wait_until(lambda: total(scrape(port), "leadpulse_hot_leads_total") >= 3, 30, "3 hot leads", worker)
        after = scrape(port)
    finally:
        worker.stop()
    assert total(after, "leadpulse_events_consumed_total", topic="leads.profiles") == 5
    assert total(after, "leadpulse_events_consumed_total", topic="events.downloads") == 4
    assert total(after, "leadpulse_events_consumed_total", topic="events.web_visits") == 2
    assert total(after, "leadpulse_hot_leads_total") == 3
    assert total(after, "leadpulse_stage_transitions_total", from_stage="awareness", to_stage="lead") == 5
    assert total(after, "leadpulse_stage_transitions_total", from_stage="lead", to_stage="mql") == 3
    assert total(after, "leadpulse_dlq_records_total", stage="decode") == 1
    assert total(after, "leadpulse_events_invalid_total", topic="events.downloads", reason="undecodable") == 1
    assert total(after, "leadpulse_event_to_score_seconds_count") == 10
    assert total(after, "leadpulse_score_updates_total") >= 8


def test_a_real_prometheus_server_scrapes_the_worker(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    # run.sh test installs the server (.ci/system-deps.sh, with promtool, which test_deploy_static already
    # requires): a missing one is a broken CI machine, and a skip would hide this test in every run
    if shutil.which("prometheus") is None:
        pytest.fail("Prometheus server not installed: run bash .ci/system-deps.sh (Debian 'prometheus')")
    worker, port = start_worker(broker_settings, broker, tmp_path / "worker.log")
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: leadpulse-worker\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def query(expr: str) -> list[dict[str, object]]:
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return list(json.load(response)["data"]["result"])
        except OSError:
            return []

    try:
        with Producer(broker_settings) as producer:
            producer.send("lead_identified", profile("PROM", int(time.time() * 1000)))
        wait_until(
            lambda: bool(query('up{job="leadpulse-worker"} == 1')), 60, "Prometheus scraping the worker"
        )
        wait_until(
            lambda: bool(query('sum(leadpulse_events_consumed_total{job="leadpulse-worker"}) >= 1')),
            60,
            "the consumed counter in Prometheus",
        )
        series = query('leadpulse_build_info{job="leadpulse-worker"}')
        assert series and series[0]["metric"]["component"] == "worker"  # type: ignore[index]
    finally:
        prom.terminate()
        prom.wait(10)
        log.close()
        worker.stop()


def test_collector_metrics_count_requests_events_and_bots(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    from tests.processes import CliProcess, http_ok, leadpulse_env

    port = free_port()
    env = leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=broker_settings.topic_prefix,
        data_dir=broker_settings.data_dir,
        collector_port=port,
        write_keys='{"site": "wk-live-1"}',
    )
    collector = CliProcess(["collector"], env, tmp_path / "collector.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "collector ready", collector)
        now = int(time.time() * 1000)
        good = [
            {
                "type": "web_visit",
                "event_id": f"c-{i}",
                "event_time": now - 1000,
                "anonymous_id": "A1",
                "url": "https://x.example/pricing",
                "page_category": "pricing",
            }
            for i in range(7)
        ]
        bad = {"type": "web_visit", "event_id": "c-bad", "event_time": now, "anonymous_id": "A1"}  # no url
        bot = {
            "type": "web_visit",
            "event_id": "c-bot",
            "event_time": now,
            "anonymous_id": "A2",
            "url": "https://x.example/",
            "user_agent": "Googlebot/2.1 (+http://www.google.com/bot.html)",
        }
        body = json.dumps({"batch": [*good, bad, bot]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/events",
            data=body,
            method="POST",
            headers={"Authorization": "Bearer wk-live-1", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 207  # some events rejected: the good ones are accepted
        samples = scrape(port)
    finally:
        collector.stop()
    assert total(samples, "leadpulse_collector_events_total", source="site", result="accepted") == 7
    assert total(samples, "leadpulse_collector_events_total", source="site", result="invalid") == 1
    assert total(samples, "leadpulse_bots_dropped_total") == 1
    assert total(samples, "leadpulse_collector_requests_total", status="207") == 1
    assert total(samples, "leadpulse_events_ingested_total", topic="events.web_visits") == 7
