"""The ops endpoints over real HTTP on a loopback port: /metrics, /health, /ready."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from streams.broker import free_port
from streams.metrics import Metrics
from streams.web import add_ops_routes, bound_port, start_ops_server

pytestmark = pytest.mark.unit


class Readiness:
    """A readiness check a test can flip, like a worker whose partitions get assigned and recovered."""

    def __init__(self) -> None:
        self.assigned: list[int] = []
        self.recovered = False

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        ready = bool(self.assigned) and self.recovered
        return ready, {"assigned_partitions": self.assigned, "recovered": self.recovered}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), component="worker", version="1.2.3")


@pytest.fixture
async def ops(metrics: Metrics) -> AsyncIterator[tuple[str, Readiness]]:
    readiness = Readiness()
    port = free_port()
    runner = await start_ops_server("127.0.0.1", port, metrics.registry, readiness)
    try:
        yield f"http://127.0.0.1:{port}", readiness
    finally:
        await runner.cleanup()


async def get(url: str, **headers: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_metrics_serves_the_given_registry_in_prometheus_text_format(
    ops: tuple[str, Readiness], metrics: Metrics
) -> None:
    base, _ = ops
    metrics.hot_leads.inc(7)
    status, content_type, body = await get(f"{base}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "leadpulse_hot_leads_total 7.0" in body
    assert 'leadpulse_build_info{component="worker",version="1.2.3"} 1.0' in body


async def test_metrics_answers_openmetrics_when_the_scraper_asks_for_it(ops: tuple[str, Readiness]) -> None:
    base, _ = ops
    status, content_type, body = await get(f"{base}/metrics", Accept="application/openmetrics-text")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


async def test_health_is_ok_while_the_process_is_not_ready(ops: tuple[str, Readiness]) -> None:
    base, _ = ops
    status, _, body = await get(f"{base}/health")
    assert status == 200
    assert '"status": "ok"' in body


async def test_ready_is_503_with_detail_until_partitions_are_assigned_and_recovered(
    ops: tuple[str, Readiness],
) -> None:
    base, readiness = ops
    status, content_type, body = await get(f"{base}/ready")
    assert status == 503
    assert content_type.startswith("application/json")
    assert '"ready": false' in body
    assert '"assigned_partitions": []' in body

    readiness.assigned = [0, 3]
    status, _, _ = await get(f"{base}/ready")
    assert status == 503  # assigned but still recovering tables

    readiness.recovered = True
    status, _, body = await get(f"{base}/ready")
    assert status == 200
    assert '"ready": true' in body
    assert '"assigned_partitions": [0, 3]' in body


async def test_a_readiness_check_that_raises_reads_as_not_ready_with_the_error(metrics: Metrics) -> None:
    def broken() -> tuple[bool, dict[str, Any]]:
        raise ConnectionError("clickhouse:8123 refused")

    runner = await start_ops_server("127.0.0.1", 0, metrics.registry, broken)
    try:
        status, _, body = await get(f"http://127.0.0.1:{bound_port(runner)}/ready")
    finally:
        await runner.cleanup()
    assert status == 503
    assert "ConnectionError: clickhouse:8123 refused" in body


async def test_routes_can_be_added_to_an_app_the_process_already_runs(metrics: Metrics) -> None:
    app = web.Application()

    async def collect(request: web.Request) -> web.Response:
        return web.Response(text="collected")

    app.router.add_post("/v1/batch", collect)
    add_ops_routes(app, metrics.registry, lambda: (True, {}))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{bound_port(runner)}"
    try:
        status, _, _ = await get(f"{base}/ready")
        metrics_status, _, body = await get(f"{base}/metrics")
        async with aiohttp.ClientSession() as session, session.post(f"{base}/v1/batch") as response:
            own = (response.status, await response.text())
    finally:
        await runner.cleanup()
    assert (status, metrics_status) == (200, 200)
    assert 'leadpulse_build_info{component="worker",version="1.2.3"} 1.0' in body  # the registry given
    assert own == (200, "collected")  # the app's own route still answers


async def test_a_busy_port_fails_with_the_address_in_the_message(metrics: Metrics) -> None:
    runner = await start_ops_server("127.0.0.1", 0, metrics.registry, lambda: (True, {}))
    try:
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{bound_port(runner)}"):
            await start_ops_server("127.0.0.1", bound_port(runner), metrics.registry, lambda: (True, {}))
    finally:
        await runner.cleanup()
