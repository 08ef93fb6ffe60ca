"""Fault 4: webhook receivers failing (5xx, connection refused) and hanging while hot leads flow through
the real ``leadpulse notifier`` process.

Four targets, one notifier process, hot leads published while the faults are on:

- ``json-0`` answers 503, then is unreachable (its proxy refuses connections), then recovers;
- ``json-1`` accepts requests and never answers until the test releases it (then answers them late, so
  the receiver sees duplicates that it removes by idempotency key, as the docs tell receivers to);
- ``json-2`` is healthy: it must get every notification while ``json-1`` still hangs;
- ``json-3`` refuses connections for good: every notification must end in the DLQ with the reason.

Pass: per target, every hot lead is delivered exactly once after dedup by idempotency key, or is a dead
letter naming the target after the give-up policy; the process never exits; offsets are committed for
all of them; the time to recover is printed.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from agents.notifier_group import notifier_group
from sinks.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature
from streams.broker import EmbeddedBroker, free_port
from streams.reader import Decoded, read_topic
from streams.settings import Settings
from streams.web import bound_port
from tests.faults.test_retry_faults import TcpProxy
from tests.integration.test_webhooks import SECRET, Receiver, committed_total, hot_lead, publish, wait_until
from tests.processes import CliProcess, http_ok, leadpulse_env

pytestmark = pytest.mark.faults

HOT_LEADS = 20
MAX_ATTEMPTS = 14  # with base 0.1 s and cap 1 s: a target may be down >= ~5.7 s before a give-up
POLICY = {
    "webhook_max_attempts": MAX_ATTEMPTS,
    "webhook_timeout_s": 1.0,
    "webhook_backoff_base_s": 0.1,
    "webhook_backoff_cap_s": 1.0,
    "webhook_concurrency": 10,
}


@dataclass
class Receivers:
    """Webhook endpoints on one loopback server; ``mode[path]`` switches each between ok, fail and hang."""

    state: Receiver
    port: int = 0
    mode: dict[str, str] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    bad_signatures: int = 0

    def url(self, path: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}/{path}"

    def handler(self, path: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            key = request.headers.get(IDEMPOTENCY_HEADER, "")
            if not verify_signature(SECRET, request.headers.get(SIGNATURE_HEADER), body, tolerance_s=60):
                self.bad_signatures += 1
                return web.Response(status=401)
            self.state.attempts[f"{path}|{key}"] += 1
            mode = self.mode.get(path, "ok")
            if mode == "fail":
                return web.Response(status=503, text="receiver overloaded")
            if mode == "hang":
                self.state.in_flight += 1
                try:
                    await self.release.wait()  # accepted, no answer until the test releases it
                finally:
                    self.state.in_flight -= 1
            # a receiver that dedups by idempotency key stores every copy but acts on the first only
            self.state.accepted[f"{path}|{key}"].append(body)
            self.state.arrivals.setdefault(f"{path}|{key}", time.monotonic())
            return web.Response(status=200)

        return handle


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    rec = Receivers(Receiver())
    app = web.Application()
    for path in ("flaky", "hang", "ok"):
        app.router.add_post(f"/{path}", rec.handler(path))
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.port = bound_port(runner)
    try:
        yield rec
    finally:
        rec.release.set()
        await runner.cleanup()


def dead_letters(settings: Settings) -> list[dict[str, object]]:
    items = read_topic(settings, settings.topic("dlq"), idle_ms=500)
    return [i.record for i in items if isinstance(i, Decoded)]


async def test_notifier_delivers_each_hot_lead_once_or_dead_letters_it_through_failing_and_hanging_receivers(
    broker: EmbeddedBroker,
    fresh_prefix: str,
    make_settings: Callable[..., Settings],
    receivers: Receivers,
    tmp_path: Path,
) -> None:
    settings = make_settings(
        kafka_bootstrap=broker.bootstrap, topic_prefix=fresh_prefix, webhook_secret=SECRET
    )
    flaky = TcpProxy("127.0.0.1", receivers.port).start()  # lets the test refuse connections to json-0
    dead_port = free_port()  # json-3: nothing ever listens here
    urls = [
        receivers.url("flaky", flaky.port),
        receivers.url("hang"),
        receivers.url("ok"),
        f"http://127.0.0.1:{dead_port}/dead",
    ]
    ops_port = free_port()
    env = leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=fresh_prefix,
        data_dir=tmp_path / "data",
        webhook_urls=json.dumps(urls),
        webhook_secret=SECRET,
        **POLICY,
    )
    proc = CliProcess(["notifier", "--ops-port", str(ops_port)], env, tmp_path / "notifier.log")
    state = receivers.state
    ids = [f"hot-{n}" for n in range(HOT_LEADS)]

    def alive() -> bool:
        if proc.proc.poll() is not None:
            raise AssertionError(f"notifier exited with {proc.proc.returncode}:\n{proc.output()[-3000:]}")
        return True

    async def ready() -> bool:
        return alive() and await asyncio.to_thread(http_ok, f"http://127.0.0.1:{ops_port}/ready")

    try:
        deadline = time.monotonic() + 60
        while not await ready():
            assert time.monotonic() < deadline, f"notifier not ready:\n{proc.output()[-3000:]}"
            await asyncio.sleep(0.25)

        receivers.mode.update(flaky="fail", hang="hang")
        records = [hot_lead(n) for n in range(HOT_LEADS)]
        await asyncio.to_thread(publish, settings, records[: HOT_LEADS // 2])
        await asyncio.sleep(1.5)  # json-0 answers 503
        flaky.refuse()  # json-0 unreachable: connection refused
        await asyncio.to_thread(publish, settings, records[HOT_LEADS // 2 :])
        await asyncio.sleep(1.5)
        receivers.mode["flaky"] = "ok"
        flaky.accept()
        recovered_at = time.monotonic()

        await wait_until(lambda: alive() and len(state.unique("ok")) == HOT_LEADS, 60, "json-2 gets all")
        await wait_until(lambda: alive() and len(state.unique("flaky")) == HOT_LEADS, 60, "json-0 recovers")
        flaky_recovery_s = max(state.arrivals[f"flaky|{i}"] for i in ids) - recovered_at
        # the healthy target got everything while json-1 still held requests and had answered none
        assert not state.unique("hang") and state.in_flight > 0
        released_at = time.monotonic()
        receivers.release.set()
        receivers.mode["hang"] = "ok"
        await wait_until(lambda: alive() and len(state.unique("hang")) == HOT_LEADS, 60, "json-1 recovers")
        hang_recovery_s = max(state.arrivals[f"hang|{i}"] for i in ids) - released_at

        letters: list[dict[str, object]] = []

        async def all_dead_lettered() -> bool:
            letters[:] = await asyncio.to_thread(dead_letters, settings)
            return alive() and len(letters) >= HOT_LEADS

        deadline = time.monotonic() + 90
        while not await all_dead_lettered():
            assert time.monotonic() < deadline, f"only {len(letters)} dead letters for json-3"
            await asyncio.sleep(0.5)
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(committed_total, settings, notifier_group(settings)) != HOT_LEADS:
            assert alive() and time.monotonic() < deadline, "offsets not committed for every hot lead"
            await asyncio.sleep(0.25)
        assert await asyncio.to_thread(http_ok, f"http://127.0.0.1:{ops_port}/health")
    finally:
        code = proc.stop()
        flaky.stop()

    assert code == 0, proc.output()[-3000:]  # stopped by the test's SIGTERM, cleanly: it never crashed
    assert "Traceback" not in proc.output(), proc.output()[-3000:]
    assert receivers.bad_signatures == 0
    # exactly once after dedup by idempotency key, at each target that recovered
    for path in ("flaky", "hang", "ok"):
        assert state.unique(path) == {f"{path}|{i}" for i in ids}, path
    assert all(len(state.accepted[f"ok|{i}"]) == 1 for i in ids)
    assert sum(state.attempts[f"flaky|{i}"] for i in ids) > HOT_LEADS, "json-0 never failed"
    # json-3 gave up on each notification after the policy, and each is a dead letter with the reason
    assert sorted(str(d["event_id"]) for d in letters) == sorted(ids)
    for letter in letters:
        assert (letter["stage"], letter["error_type"]) == ("webhook", "WebhookDeliveryFailed")
        assert letter["source_topic"] == settings.topic("leads.hot")
        assert f"json-3 (127.0.0.1): gave up after {MAX_ATTEMPTS} attempt(s)" in str(letter["error"])
    duplicates = sum(len(state.accepted[f"hang|{i}"]) - 1 for i in ids)
    print(
        f"json-0 (503 then refused for 3 s): {sum(state.attempts[f'flaky|{i}'] for i in ids)} attempts, "
        f"all {HOT_LEADS} delivered {flaky_recovery_s:.2f} s after it recovered; "
        f"json-1 (hanging): all delivered {hang_recovery_s:.2f} s after release, {duplicates} late duplicate "
        f"copies removed by idempotency key; json-3 (refused): {len(letters)} dead letters, e.g. "
        f"{letters[0]['error']!r}"
    )


@pytest.mark.parametrize("backlog", [3, 10_100], ids=["in-backoff", "lane-queue-full"])
async def test_sigterm_with_the_receiver_down_stops_promptly_and_leaves_the_notifications_uncommitted(
    broker: EmbeddedBroker,
    fresh_prefix: str,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    backlog: int,
) -> None:
    """Ops audit F4/F5 with the real process and the default timeout, lane workers and queue (10 s, 4,
    10,000): SIGTERM took 10.6 s with 3 notifications in retry backoff, and never ended with the
    lane queue full (the consumer waited for room). Now it ends within seconds, with no dead letter and no
    offset committed: the next notifier delivers them (tests/integration/test_webhooks.py)."""
    settings = make_settings(
        kafka_bootstrap=broker.bootstrap, topic_prefix=fresh_prefix, webhook_secret=SECRET
    )
    ops_port = free_port()
    env = leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=fresh_prefix,
        data_dir=tmp_path / "data",
        webhook_urls=json.dumps([f"http://127.0.0.1:{free_port()}/down"]),  # nothing listens there
        webhook_secret=SECRET,
        webhook_max_attempts=50,  # no give-up (dead letter) before the SIGTERM, whatever the test's pace
    )
    await asyncio.to_thread(publish, settings, [hot_lead(n) for n in range(backlog)])
    proc = CliProcess(["notifier", "--ops-port", str(ops_port)], env, tmp_path / "notifier.log")

    def in_flight() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/ready", timeout=1) as response:
                return int(json.load(response).get("in_flight", 0))
        except (OSError, ValueError):
            return 0

    expected = min(backlog, 10_000 + 4 + 1)  # queued + held by the 4 workers + the one waiting for room
    try:
        deadline = time.monotonic() + 120
        while await asyncio.to_thread(in_flight) < expected:
            assert proc.proc.poll() is None, proc.output()[-3000:]
            assert time.monotonic() < deadline, f"in flight < {expected}\n{proc.output()[-3000:]}"
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # every worker in a retry backoff
        stopped_at = time.monotonic()
        code = await asyncio.to_thread(proc.stop, 30.0)
        stop_s = time.monotonic() - stopped_at
    finally:
        proc.stop()
    print(f"notifier, receiver down, {backlog} hot leads: SIGTERM to exit {stop_s:.2f} s (exit code {code})")
    assert stop_s < 5.0, proc.output()[-3000:]
    assert code == 0, proc.output()[-3000:]
    assert "Traceback" not in proc.output(), proc.output()[-3000:]
    assert await asyncio.to_thread(dead_letters, settings) == []
    assert await asyncio.to_thread(committed_total, settings, notifier_group(settings)) == 0
