"""Fault 2b: ClickHouse unreachable, then back.

Without a ClickHouse server on this machine (embedded chDB only), "unreachable" is the real sink process
pointed at a server DSN where nothing listens, and "back" is the sink restarted against a working engine
(the embedded one). Pass: while ClickHouse is away the sink stays up (no crash loop), says why in one log
line per attempt, commits no offset and stores nothing; once ClickHouse is there every acknowledged event is
stored exactly once. While it waits, its /health and /metrics answer and /ready says what it waits for.
(Insert failures *during* a run — offsets held, batches retried with the same dedup token — are covered
in-process by tests/integration/test_clickhouse_sink.py, and a sink killed mid-insert by its SIGKILL test.)
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from leadpulse.live_view import scrape, total
from sinks.query_service import http_runner
from sinks.sink_loop import sink_group
from streams.broker import EmbeddedBroker, free_port
from streams.producer import Producer
from streams.samples import sample_events
from streams.settings import Settings
from tests.processes import CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.faults

EVENTS = 3_000


def _committed(settings: Settings) -> int:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        group = sink_group(settings)
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)


def test_sink_waits_out_an_unreachable_clickhouse_and_then_stores_everything_once(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    ids = []
    with Producer(broker_settings) as producer:
        for record in sample_events("web_visit", EVENTS, seed=41):
            record = {**record, "event_id": f"{broker_settings.topic_prefix}{record['event_id']}"}
            producer.send("web_visit", record)
            ids.append(record["event_id"])
    common = {
        "kafka_bootstrap": broker.bootstrap,
        "topic_prefix": broker_settings.topic_prefix,
        "data_dir": tmp_path / "data",
    }
    closed = free_port()  # nothing listens here
    away_port = free_port()
    away = CliProcess(
        ["sink"],
        leadpulse_env(**common, clickhouse_dsn=f"http://127.0.0.1:{closed}", sink_port=away_port),
        tmp_path / "sink-away.log",
    )
    try:
        wait_until(lambda: away.output().count("unavailable") >= 3, 60, "three retries logged", away)
        assert away.proc.poll() is None, away.output()[-2000:]  # still running: no crash loop
        assert _committed(broker_settings) == 0
        # its ops endpoints answer meanwhile: alive, scrapeable, and not ready, saying what it waits for
        base = f"http://127.0.0.1:{away_port}"
        assert http_ok(f"{base}/health")
        assert "leadpulse_build_info" in urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        # every failed attempt counts, so LeadpulseSinkFailing fires (it exported no failure before: a sink
        # waiting for ClickHouse was invisible to every alert)
        failures = total(scrape(f"{base}/metrics"), "leadpulse_sink_failures_total", kind="unavailable")
        assert failures >= 3, failures
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{base}/ready", timeout=5)
        assert not_ready.value.code == 503
        assert json.loads(not_ready.value.read())["waiting_for"] == f"ClickHouse at http://127.0.0.1:{closed}"
    finally:
        code = away.stop()
    log = away.output()
    assert code == 0, log[-2000:]
    assert "Traceback" not in log, log[-3000:]
    assert f"ClickHouse at http://127.0.0.1:{closed} unavailable" in log

    back_at = time.monotonic()
    port = free_port()
    sink = CliProcess(
        ["sink", "--batch-seconds", "0.2"], leadpulse_env(**common, sink_port=port), tmp_path / "sink.log"
    )
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "sink ready", sink)
        run = http_runner(f"http://127.0.0.1:{port}")

        def stored(final: bool) -> int:
            sql = (
                f"SELECT count() FROM leadpulse.events{' FINAL' if final else ''} "
                "WHERE startsWith(event_id, {p:String})"
            )
            return int(run(sql, {"p": broker_settings.topic_prefix}).rows[0][0])

        wait_until(lambda: stored(final=True) >= EVENTS, 120, "every event stored", sink)
        print(f"\nClickHouse back: {EVENTS:,} events stored {time.monotonic() - back_at:.1f} s after")
        wait_until(lambda: _committed(broker_settings) >= EVENTS, 60, "offsets committed", sink)
        assert stored(final=True) == EVENTS and stored(final=False) == EVENTS  # once, even before merges
    finally:
        sink.stop()
