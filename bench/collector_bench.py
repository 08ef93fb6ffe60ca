"""Collector throughput: events/s accepted by ONE collector process (batches of 100, 202 only after the broker
acked) against producing the same events straight through the SDK in the same run, plus request latency.

Targets (issue 5): >= 20k events/s and >= 50% of the SDK rate. Run it:

    .venv/bin/python bench/collector_bench.py                 # starts a Tansu broker of its own
    .venv/bin/python bench/collector_bench.py --events 50000 --bootstrap 127.0.0.1:9092

The collector runs in a child process (so its CPU is its own process' CPU, as in production); the load
generator is this process. On a 2-core machine both compete for the cores, so the collector number is a
floor. Both producer bridges are measured: aiokafka (native asyncio, the default) and kafka-python futures
bridged into asyncio (the SDK's client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

from schemas.registry import default_registry
from streams.broker import create_topics, free_port, start_private_broker
from streams.producer import Producer
from streams.samples import sample_events
from streams.settings import Settings, load_settings

KEY = "bench-key"
PUBLISHERS = ("aiokafka", "kafka-python")


def make_events(count: int) -> list[dict[str, Any]]:
    registry = default_registry()
    now = int(time.time() * 1000)
    events = []
    for event in sample_events("web_visit", count):
        record = registry.validate("web_visit", event)
        record.update(event_time=now, received_at=None)
        events.append(record)
    return events


def sdk_rate(settings: Settings, events: list[dict[str, Any]]) -> float:
    """Events/s through the SDK (validate + encode + produce + flush), the baseline."""
    with Producer(settings) as producer:
        start = time.perf_counter()
        for event in events:
            producer.send("web_visit", event)
        producer.flush()
        return len(events) / (time.perf_counter() - start)


def _serve(bootstrap: str, prefix: str, port: int, publisher: str) -> None:
    """Child process: one collector on loopback."""
    from aiohttp import web

    from streams.collector import Collector
    from streams.collector_publishers import AioKafkaPublisher, KafkaPythonPublisher

    settings = load_settings(  # no rate limit: the bench measures what the collector can take
        kafka_bootstrap=bootstrap, topic_prefix=prefix, write_keys={"bench": KEY}, collector_rate_limit=0
    )
    chosen = AioKafkaPublisher(settings) if publisher == "aiokafka" else KafkaPythonPublisher(settings)
    web.run_app(
        Collector(settings, publisher=chosen).app(), host="127.0.0.1", port=port, access_log=None, print=None
    )


async def _load(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    accepted = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            start = time.perf_counter()
            async with session.post(url + "/v1/events", data=body, headers=headers) as response:
                answer = await response.json()
                if response.status != 202:
                    raise RuntimeError(f"collector answered {response.status}: {answer}")
            latencies.append(time.perf_counter() - start)
            accepted += int(answer["accepted"])

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, accepted


def _wait_ready(url: str, timeout_s: float = 30.0) -> None:
    async def probe() -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(url + "/ready") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"collector at {url} not ready within {timeout_s} s")

    asyncio.run(probe())


def collector_rate(
    bootstrap: str, prefix: str, events: list[dict[str, Any]], batch: int, concurrency: int, publisher: str
) -> dict[str, Any]:
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", bootstrap, prefix, str(port), publisher],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url)
        warm = [
            json.dumps(
                {"batch": [{"type": "web_visit", **e, "event_id": str(uuid.uuid4())} for e in events[:batch]]}
            ).encode()
        ]
        asyncio.run(_load(url, warm * 5, 1))  # connections, metadata, JIT-free warm-up of the code paths
        bodies = [
            json.dumps({"batch": [{"type": "web_visit", **e} for e in events[i : i + batch]]}).encode()
            for i in range(0, len(events), batch)
        ]
        cpu_before = _cpu_seconds(child.pid)
        elapsed, latencies, accepted = asyncio.run(_load(url, bodies, concurrency))
        cpu_after = _cpu_seconds(child.pid)
    finally:
        child.terminate()
        child.wait(timeout=30)
    if accepted != len(events):
        raise RuntimeError(f"collector accepted {accepted} of {len(events)} events")
    latencies.sort()
    return {
        "events_per_s": accepted / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "requests": len(latencies),
        # CPU the collector process spent per accepted event: unlike events/s, it hardly moves when other
        # jobs share the cores (None where /proc is missing)
        "cpu_us_per_event": (
            (cpu_after - cpu_before) / accepted * 1e6
            if cpu_before is not None and cpu_after is not None
            else None
        ),
    }


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_collector_bench(
    *,
    events: int = 40_000,
    batch: int = 100,
    concurrency: int = 8,
    bootstrap: str | None = None,
    publishers: tuple[str, ...] = PUBLISHERS,
) -> dict[str, Any]:
    """Measure SDK and collector rates in one run; returns the numbers and prints a summary."""
    with ExitStack() as stack:
        if bootstrap is None:
            broker = start_private_broker(None)
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
        prefix = f"bench-{uuid.uuid4().hex[:8]}."
        create_topics(bootstrap, prefix)
        settings = load_settings(kafka_bootstrap=bootstrap, topic_prefix=prefix)
        data = make_events(events)
        result: dict[str, Any] = {
            "events": events,
            "batch": batch,
            "concurrency": concurrency,
            "sdk_events_per_s": sdk_rate(settings, data),
        }
        for publisher in publishers:
            for event in data:
                event["event_id"] = str(uuid.uuid4())  # fresh ids: each run is new traffic
            result[publisher] = collector_rate(bootstrap, prefix, data, batch, concurrency, publisher)
            result[publisher]["ratio_to_sdk"] = result[publisher]["events_per_s"] / result["sdk_events_per_s"]
    print(f"SDK (kafka-python, same events, same run): {result['sdk_events_per_s']:,.0f} events/s")
    for publisher in publishers:
        r = result[publisher]
        verdict = "meets" if r["events_per_s"] >= 20_000 and r["ratio_to_sdk"] >= 0.5 else "MISSES"
        print(
            f"collector via {publisher:12s}: {r['events_per_s']:,.0f} events/s = "
            f"{r['ratio_to_sdk']:.0%} of SDK; "
            f"request p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; "
            + (f"CPU {r['cpu_us_per_event']:.0f} us/event " if r["cpu_us_per_event"] is not None else "")
            + f"({verdict} >= 20k/s and >= 50%)"
        )
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--publisher", choices=PUBLISHERS, action="append")
    args = parser.parse_args()
    run_collector_bench(
        events=args.events,
        batch=args.batch,
        concurrency=args.concurrency,
        bootstrap=args.bootstrap,
        publishers=tuple(args.publisher or PUBLISHERS),
    )


if __name__ == "__main__":
    main()
