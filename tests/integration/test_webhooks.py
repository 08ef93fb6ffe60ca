"""The notifier against the real broker and real HTTP receivers on loopback; at the end, the notifier stopping
while a receiver is down and its lag metric after a restart (ops audit F1, F4, F5). A notification not
delivered when the notifier stops is neither dead-lettered nor committed: the next process delivers it
(receivers dedup by the idempotency key if it was sent before)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from agents import notifier_group
from agents.notifications import Notifier
from agents.notifier_group import GROUP_ID
from schemas.registry import default_registry
from sinks.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    RetryPolicy,
    WebhookSender,
    WebhookTarget,
    verify_signature,
)
from streams.broker import EmbeddedBroker, free_port
from streams.dlq import writer_of
from streams.metrics import Metrics
from streams.producer import Producer
from streams.reader import Decoded, read_topic
from streams.settings import Settings
from streams.web import bound_port

pytestmark = pytest.mark.integration

SECRET = "whsec_integration"
FAST = RetryPolicy(max_attempts=6, base_s=0.02, cap_s=0.1, timeout_s=5.0)


@dataclass
class Receiver:
    """A webhook receiver that dedups by idempotency key, as the docs tell receivers to."""

    url: str = ""
    attempts: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    bad_signatures: int = 0
    arrivals: dict[str, float] = field(default_factory=dict)
    in_flight: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    fixed: bool = False  # the "fixable" receiver answers 410 until this is set

    def unique(self, path: str) -> set[str]:
        return {key for key, bodies in self.accepted.items() if key.startswith(path + "|")}


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, asyncio.Event]]:
    state = Receiver()
    release = asyncio.Event()

    def handler(
        path: str, behaviour: Callable[[str], Awaitable[int]]
    ) -> Callable[[web.Request], Awaitable[Any]]:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            key = request.headers.get(IDEMPOTENCY_HEADER, "")
            if not verify_signature(SECRET, request.headers.get(SIGNATURE_HEADER), body, tolerance_s=60):
                state.bad_signatures += 1
                return web.Response(status=401)
            state.attempts[f"{path}|{key}"] += 1
            state.in_flight += 1
            try:
                status = await behaviour(key)
            finally:
                state.in_flight -= 1
            if status == 200:
                state.accepted[f"{path}|{key}"].append(body)
                state.arrivals.setdefault(f"{path}|{key}", time.monotonic())
            state.changed.set()
            return web.Response(status=status)

        return handle

    async def flaky(key: str) -> int:
        return 503 if state.attempts[f"flaky|{key}"] <= 3 else 200

    async def ok(key: str) -> int:
        return 200

    async def hang(key: str) -> int:
        await release.wait()
        return 200

    async def gone(key: str) -> int:
        return 410

    async def fixable(key: str) -> int:
        return 200 if state.fixed else 410

    app = web.Application()
    for path, behaviour in (
        ("flaky", flaky),
        ("ok", ok),
        ("hang", hang),
        ("gone", gone),
        ("fixable", fixable),
    ):
        app.router.add_post(f"/{path}", handler(path, behaviour))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.url = f"http://127.0.0.1:{bound_port(runner)}"
    try:
        yield state, release
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture
def hot_settings(
    broker: EmbeddedBroker, fresh_prefix: str, make_settings: Callable[..., Settings]
) -> Settings:
    return make_settings(kafka_bootstrap=broker.bootstrap, topic_prefix=fresh_prefix, webhook_secret=SECRET)


def hot_lead(n: int, lead_id: str | None = None) -> dict[str, Any]:
    return {
        "lead_id": lead_id or f"L-{n}",
        "notification_id": f"hot-{n}",
        "score": 130.0,
        "fit": 50.0,
        "behaviour": 80.0,
        "reason": "score_threshold",
        "became_hot_at": 1_750_000_000_000 + n,
        "email": f"lead{n}@acme.io",
        "company_name": "Acme",
        "signals": [
            {
                "rule": "pricing_page",
                "event_type": "web_visit",
                "event_id": f"e{n}",
                "event_time": 1_750_000_000_000,
                "points": 30.0,
                "current_points": 30.0,
            }
        ],
    }


def publish(settings: Settings, records: list[dict[str, Any]], *, validate: bool = True) -> None:
    with Producer(settings) as producer:
        for record in records:
            producer.send("hot_lead", record, validate=validate)


def committed_total(settings: Settings, group: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        topic = settings.topic("leads.hot")
        return sum(
            consumer.committed(TopicPartition(topic, p)) or 0 for p in consumer.partitions_for_topic(topic)
        )
    finally:
        consumer.close()


async def start(notifier: Notifier) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(notifier.run(stop))


async def test_receiver_failing_three_times_gets_each_notification_once_with_valid_signatures(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event]
) -> None:
    state, _ = receiver
    metrics = Metrics(CollectorRegistry(), component="notifier")
    targets = [
        WebhookTarget("json-0", state.url + "/flaky"),
        WebhookTarget("slack-0", state.url + "/ok", "slack"),
    ]
    notifier = Notifier(hot_settings, targets=targets, metrics=metrics, policy=FAST, group_id="n-flaky")
    records = [hot_lead(n) for n in range(3)]
    await asyncio.to_thread(publish, hot_settings, [*records, records[0]])  # the last is a replayed duplicate
    stop, task = await start(notifier)
    await wait_until(
        lambda: len(state.unique("flaky")) == 3 and len(state.unique("ok")) == 3,
        60,
        "3 notifications at both receivers",
    )
    await wait_until(lambda: notifier.pending.in_flight == 0, 10, "all deliveries finished")
    stop.set()
    await asyncio.wait_for(task, 30)
    assert state.bad_signatures == 0
    assert {k: len(v) for k, v in state.accepted.items()} == {
        f"{p}|hot-{n}": 1 for p in ("flaky", "ok") for n in range(3)
    }
    assert all(state.attempts[f"flaky|hot-{n}"] == 4 for n in range(3))  # 3 failures, then success
    value = metrics.registry.get_sample_value
    assert value("leadpulse_webhook_retries_total", {"target": "json-0"}) == 9
    assert value("leadpulse_webhook_deliveries_total", {"target": "json-0"}) == 3
    assert value("leadpulse_webhook_deliveries_total", {"target": "slack-0"}) == 3
    # every target's series exist from the start (at 0), so rate() sees a first failure or retry
    assert value("leadpulse_webhook_failures_total", {"target": "json-0"}) == 0
    assert value("leadpulse_webhook_failures_total", {"target": "slack-0"}) == 0
    assert value("leadpulse_webhook_retries_total", {"target": "slack-0"}) == 0
    assert (
        await asyncio.to_thread(committed_total, hot_settings, "n-flaky") == 4
    )  # after delivery, all of them


async def test_a_hanging_receiver_does_not_delay_notifications_to_the_others(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event]
) -> None:
    state, release = receiver
    targets = [WebhookTarget("json-0", state.url + "/hang"), WebhookTarget("json-1", state.url + "/ok")]
    policy = RetryPolicy(max_attempts=2, base_s=0.02, cap_s=0.1, timeout_s=60.0)
    metrics = Metrics(CollectorRegistry(), component="notifier")
    notifier = Notifier(
        hot_settings, targets=targets, policy=policy, group_id="n-hang", concurrency=2, metrics=metrics
    )

    def lag() -> float:  # leadpulse_consumer_lag of the notifier's group, all partitions
        return sum(
            s.value
            for family in metrics.registry.collect()
            if family.name == "leadpulse_consumer_lag"
            for s in family.samples
            if s.labels["group"] == "n-hang"
        )

    stop, task = await start(notifier)
    await wait_until(lambda: notifier.assigned, 30, "partition assignment")
    sent_at = time.monotonic()
    await asyncio.to_thread(publish, hot_settings, [hot_lead(n, lead_id="L-same") for n in range(5)])
    await wait_until(lambda: len(state.unique("ok")) == 5, 30, "5 notifications at the healthy receiver")
    healthy_s = max(state.arrivals[f"ok|hot-{n}"] for n in range(5)) - sent_at
    # Every healthy delivery finished while the hanging receiver still held requests open and had answered
    # none: the healthy lane never waited for the hanging one.
    assert state.in_flight == 2 and not state.unique("hang")
    assert not release.is_set()
    # ... and nothing was committed past the first notification the hanging target still owes.
    assert set(notifier.pending.committable().values()) == {0}
    # ... and the stuck receiver shows as lag (the notifier exported none before the ops audit)
    await wait_until(lambda: lag() == 5, 10, "the notifier's lag to show the 5 owed notifications")
    print(f"healthy receiver got 5 notifications {healthy_s * 1000:.0f} ms after publishing, other hanging")
    release.set()
    await wait_until(lambda: len(state.unique("hang")) == 5, 30, "the hanging receiver to catch up")
    await wait_until(lambda: notifier.pending.in_flight == 0, 10, "all deliveries finished")
    stop.set()
    await asyncio.wait_for(task, 30)
    assert await asyncio.to_thread(committed_total, hot_settings, "n-hang") == 5
    assert lag() == 0


async def test_delivery_given_up_becomes_a_dead_letter_with_the_original_bytes(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event]
) -> None:
    state, _ = receiver
    metrics = Metrics(CollectorRegistry(), component="notifier")
    targets = [WebhookTarget("json-0", state.url + "/gone"), WebhookTarget("json-1", state.url + "/ok")]
    notifier = Notifier(hot_settings, targets=targets, metrics=metrics, policy=FAST, group_id="n-gone")
    record = hot_lead(7)
    await asyncio.to_thread(publish, hot_settings, [record])
    stop, task = await start(notifier)
    await wait_until(lambda: len(state.unique("ok")) == 1, 30, "delivery to the healthy target")
    await wait_until(lambda: notifier.pending.in_flight == 0, 10, "the give-up")
    stop.set()
    await asyncio.wait_for(task, 30)
    assert state.attempts["gone|hot-7"] == 1  # 410 is permanent: not retried
    letters = [
        i
        for i in await asyncio.to_thread(
            lambda: list(read_topic(hot_settings, hot_settings.topic("dlq"), idle_ms=800))
        )
        if isinstance(i, Decoded)
    ]
    assert len(letters) == 1
    assert writer_of(letters[0].headers) == "notifier"
    dead = letters[0].record
    assert (dead["source_topic"], dead["stage"], dead["event_id"]) == (
        hot_settings.topic("leads.hot"),
        "webhook",
        "hot-7",
    )
    assert "json-0" in dead["error"] and "410" in dead["error"]
    assert default_registry().decode(dead["value"])[1] == default_registry().validate("hot_lead", record)
    assert metrics.registry.get_sample_value("leadpulse_webhook_failures_total", {"target": "json-0"}) == 1
    assert (
        metrics.registry.get_sample_value(
            "leadpulse_dlq_records_total", {"source_topic": "leads.hot", "stage": "webhook"}
        )
        == 1
    )
    assert await asyncio.to_thread(committed_total, hot_settings, "n-gone") == 1


async def test_a_given_up_notification_replayed_from_the_dlq_is_delivered_by_the_running_notifier(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event]
) -> None:
    """``leadpulse dlq replay --stage webhook`` re-publishes the original record to leads.hot; the running
    notifier delivers it to the receiver that gave up before, and not again to the one that took it."""
    state, _ = receiver
    targets = [WebhookTarget("json-0", state.url + "/fixable"), WebhookTarget("json-1", state.url + "/ok")]
    notifier = Notifier(hot_settings, targets=targets, policy=FAST, group_id="n-replay")
    record = hot_lead(8)
    await asyncio.to_thread(publish, hot_settings, [record])
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: state.attempts["fixable|hot-8"] == 1, 30, "the permanent failure")
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "the give-up")
        state.fixed = True
        await asyncio.to_thread(publish, hot_settings, [record])  # what dlq replay sends
        await wait_until(lambda: len(state.unique("fixable")) == 1, 30, "the replayed notification delivered")
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "the replay handled")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert state.attempts["fixable|hot-8"] == 2
    assert state.attempts["ok|hot-8"] == 1  # delivered once; the replayed copy is remembered there


def dead_letter_count(settings: Settings) -> int:
    items = read_topic(settings, settings.topic("dlq"), idle_ms=500)
    return sum(1 for i in items if isinstance(i, Decoded))


def lag_of(metrics: Metrics, group: str) -> dict[str, float]:
    """leadpulse_consumer_lag of ``group``, by partition."""
    return {
        s.labels["partition"]: s.value
        for family in metrics.registry.collect()
        if family.name == "leadpulse_consumer_lag"
        for s in family.samples
        if s.labels["group"] == group
    }


async def deliver_rest(
    settings: Settings, receiver: tuple[Receiver, asyncio.Event], group: str, count: int
) -> None:
    """A new notifier of ``group`` with the receiver up delivers all ``count`` notifications, each once."""
    state, _ = receiver
    notifier = Notifier(
        settings, targets=[WebhookTarget("json-0", state.url + "/ok")], policy=FAST, group_id=group
    )
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: len(state.unique("ok")) == count, 60, f"{count} notifications after restart")
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "all deliveries finished")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert {k: len(v) for k, v in state.accepted.items()} == {f"ok|hot-{n}": 1 for n in range(count)}
    assert await asyncio.to_thread(committed_total, settings, group) == count


async def test_stop_with_the_receiver_down_is_prompt_and_leaves_the_notifications_for_the_next_process(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event]
) -> None:
    """F4: the stop waited the per-attempt HTTP timeout (10 s) while lanes slept in retry backoff."""
    metrics = Metrics(CollectorRegistry(), component="notifier")
    down = WebhookTarget("json-0", f"http://127.0.0.1:{free_port()}/hook")  # nothing listens there
    policy = RetryPolicy(max_attempts=20, base_s=0.5, cap_s=5.0, timeout_s=10.0)  # the default timeout
    notifier = Notifier(hot_settings, targets=[down], metrics=metrics, policy=policy, group_id="n-stop")
    await asyncio.to_thread(publish, hot_settings, [hot_lead(n) for n in range(3)])
    stop, task = await start(notifier)

    def retries() -> float:
        return metrics.registry.get_sample_value("leadpulse_webhook_retries_total", {"target": "json-0"}) or 0

    await wait_until(lambda: retries() >= 3, 30, "every notification in its retry backoff")
    stopped_at = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 30)
    stop_s = time.monotonic() - stopped_at
    print(f"notifier stopped {stop_s:.2f} s after stop, receiver down, 3 notifications in retry backoff")
    assert stop_s < 3.0
    assert (
        metrics.registry.get_sample_value("leadpulse_webhook_failures_total", {"target": "json-0"}) or 0
    ) == 0
    assert await asyncio.to_thread(dead_letter_count, hot_settings) == 0
    assert await asyncio.to_thread(committed_total, hot_settings, "n-stop") == 0
    await deliver_rest(hot_settings, receiver, "n-stop", 3)


async def test_stop_with_a_full_lane_queue_and_the_receiver_down(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event]
) -> None:
    """F5: the consumer waited on a full lane queue without looking at stop, and never stopped."""
    down = WebhookTarget("json-0", f"http://127.0.0.1:{free_port()}/hook")
    policy = RetryPolicy(max_attempts=1000, base_s=0.05, cap_s=0.2, timeout_s=10.0)
    notifier = Notifier(
        hot_settings, targets=[down], policy=policy, group_id="n-full", concurrency=1, queue_size=5
    )
    await asyncio.to_thread(publish, hot_settings, [hot_lead(n) for n in range(30)])
    stop, task = await start(notifier)
    lane = notifier.lanes[0]
    # one job held by the lane's only worker, five queued, the consumer waiting to put the seventh
    await wait_until(lambda: lane.queue.full() and notifier.pending.in_flight == 7, 30, "a full lane queue")
    stopped_at = time.monotonic()
    stop.set()
    try:
        await asyncio.wait_for(asyncio.shield(task), 10)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise AssertionError("the notifier was still running 10 s after stop") from None
    stop_s = time.monotonic() - stopped_at
    print(f"notifier stopped {stop_s:.2f} s after stop, lane queue full, receiver down")
    assert stop_s < 3.0
    assert await asyncio.to_thread(dead_letter_count, hot_settings) == 0
    assert await asyncio.to_thread(committed_total, hot_settings, "n-full") == 0
    await deliver_rest(hot_settings, receiver, "n-full", 30)


async def test_lag_after_a_restart_counts_from_the_groups_committed_offsets(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event]
) -> None:
    """F1: a restarted notifier with nothing new to deliver exported the whole log as its lag."""
    await asyncio.to_thread(publish, hot_settings, [hot_lead(n) for n in range(6)])
    await deliver_rest(hot_settings, receiver, "n-lag", 6)

    metrics = Metrics(CollectorRegistry(), component="notifier")
    state, _ = receiver
    notifier = Notifier(
        hot_settings,
        targets=[WebhookTarget("json-0", state.url + "/ok")],
        metrics=metrics,
        policy=FAST,
        group_id="n-lag",
        commit_interval_s=0.1,
    )
    # every partition of leads.hot shows a lag once its high watermark is known
    partitions = len(await asyncio.to_thread(read_partitions, hot_settings))
    stop, task = await start(notifier)
    try:
        await wait_until(
            lambda: len(lag_of(metrics, "n-lag")) == partitions, 30, "a lag series per partition"
        )
        await asyncio.sleep(0.5)
        lag = lag_of(metrics, "n-lag")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sum(lag.values()) == 0, lag
    assert len(state.unique("ok")) == 6  # nothing delivered again


def read_partitions(settings: Settings) -> set[int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap)
    try:
        return set(consumer.partitions_for_topic(settings.topic("leads.hot")) or ())
    finally:
        consumer.close()


async def test_prefixed_group_takes_over_where_the_unprefixed_group_of_earlier_releases_left_off(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event]
) -> None:
    """The notifier's group was ``leadpulse-notifier`` whatever LEADPULSE_TOPIC_PREFIX said, so deployments
    sharing a cluster shared it. It is now prefixed like the worker's and the sink's; the first prefixed
    notifier starts at the old group's offsets: nothing delivered again, nothing skipped."""
    assert hot_settings.topic_prefix
    state, _ = receiver
    await asyncio.to_thread(publish, hot_settings, [hot_lead(n) for n in range(3)])
    await deliver_rest(hot_settings, receiver, GROUP_ID, 3)  # an earlier release's notifier
    await asyncio.to_thread(publish, hot_settings, [hot_lead(n) for n in range(3, 5)])

    metrics = Metrics(CollectorRegistry(), component="notifier")
    notifier = Notifier(hot_settings, targets=[WebhookTarget("json-0", state.url + "/ok")], metrics=metrics)
    assert notifier.group_id == hot_settings.topic_prefix + GROUP_ID
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: len(state.unique("ok")) == 5, 60, "the two new notifications")
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "all deliveries finished")
        await asyncio.sleep(1.0)  # the commit loop, and time for a wrong re-delivery to show
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert {k: len(v) for k, v in state.accepted.items()} == {f"ok|hot-{n}": 1 for n in range(5)}
    assert await asyncio.to_thread(committed_total, hot_settings, notifier.group_id) == 5
    assert await asyncio.to_thread(committed_total, hot_settings, GROUP_ID) == 3  # left as it was
    assert set(lag_of(metrics, GROUP_ID)) and not lag_of(metrics, notifier.group_id)  # catalogue label


async def test_a_lead_id_with_a_line_break_does_not_stall_the_partition(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event]
) -> None:
    """Receiver audit: a lead id from the tracker may hold any character, and the notification id (the
    idempotency header) carries it. With CR/LF aiohttp refused the request; the lane logged the exception
    and the offset stayed open for good: never delivered, never a dead letter, the lag stuck at 1 and the
    partition never committed past it. Now the header is percent-encoded (``unquote`` gives the id)."""
    from urllib.parse import unquote

    state, _ = receiver
    notifier = Notifier(
        hot_settings, targets=[WebhookTarget("json-0", state.url + "/ok")], policy=FAST, group_id="n-crlf"
    )
    poison = dict(hot_lead(1, lead_id="L-1\r\nX-Evil: 1"), notification_id="L-1\r\nX-Evil: 1:hot:1")
    after = dict(hot_lead(2, lead_id="L-1\r\nX-Evil: 1"), notification_id="L-1\r\nX-Evil: 1:hot:2")
    # validate=False: ids with control characters are refused at every way in now, but records written
    # before that (or by another client into leads.hot) must still not stall the notifier
    await asyncio.to_thread(publish, hot_settings, [poison, after], validate=False)  # same key: in order
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: len(state.unique("ok")) == 2, 30, "both notifications delivered")
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "both settled")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert {unquote(k.split("|", 1)[1]) for k in state.unique("ok")} == {
        poison["notification_id"],
        after["notification_id"],
    }
    assert await asyncio.to_thread(committed_total, hot_settings, "n-crlf") == 2


def dlq_failing(settings: Settings, monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make the notifier's first ``times`` dead-letter sends fail as when no broker answers in time; the list
    returned counts the failures."""
    failures: list[int] = []
    real = AIOKafkaProducer.send_and_wait

    async def send_and_wait(self: AIOKafkaProducer, topic: str, *args: Any, **kwargs: Any) -> Any:
        if topic == settings.topic("dlq") and len(failures) < times:
            failures.append(1)
            raise KafkaTimeoutError("injected: the broker did not acknowledge the dead letter")
        return await real(self, topic, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaProducer, "send_and_wait", send_and_wait)
    return failures


async def test_a_webhook_dead_letter_the_broker_does_not_take_is_sent_again(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane gave up: the notification was neither delivered nor dead-lettered, and its partition's
    offset stayed uncommitted for the life of the process (every later notification re-delivered after a
    restart)."""
    state, _ = receiver
    failures = dlq_failing(hot_settings, monkeypatch, times=1)
    targets = [WebhookTarget("json-0", state.url + "/gone")]
    notifier = Notifier(hot_settings, targets=targets, policy=FAST, group_id="n-dlq-lane")
    await asyncio.to_thread(publish, hot_settings, [hot_lead(11)])
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: bool(failures) or task.done(), 30, "the dead letter")
        await wait_until(lambda: notifier.pending.in_flight == 0 or task.done(), 5, "the letter sent again")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert await asyncio.to_thread(dead_letter_count, hot_settings) == 1
    assert await asyncio.to_thread(committed_total, hot_settings, "n-dlq-lane") == 1


async def test_an_undecodable_record_is_not_committed_before_its_dead_letter_is_taken(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its offset counted as finished before the dead letter was sent: the commit loop (and the final
    commit of a notifier whose dead letter failed) committed past a record that is nowhere."""
    state, _ = receiver
    failures = dlq_failing(hot_settings, monkeypatch, times=1_000)
    notifier = Notifier(
        hot_settings, targets=[WebhookTarget("json-0", state.url + "/ok")], policy=FAST, group_id="n-dlq-bad"
    )

    def publish_garbage() -> None:
        producer = KafkaProducer(bootstrap_servers=hot_settings.bootstrap)
        producer.send(hot_settings.topic("leads.hot"), b"not avro", key=b"L-bad").get(10)
        producer.close()

    await asyncio.to_thread(publish_garbage)
    stop, task = await start(notifier)
    await wait_until(lambda: len(failures) >= 2 or task.done(), 30, "the dead letter refused twice")
    await asyncio.sleep(notifier.commit_interval_s * 2)  # the commit loop had its chances
    stop.set()
    outcome = (await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30))[0]
    committed = await asyncio.to_thread(committed_total, hot_settings, "n-dlq-bad")
    assert (committed, repr(outcome)) == (0, "None")  # not committed past it, and no crash either


def subscribed_consumers(monkeypatch: pytest.MonkeyPatch) -> list[AIOKafkaConsumer]:
    """The consumers that subscribe from now on (to force a rejoin on the notifier's own consumer)."""
    consumers: list[AIOKafkaConsumer] = []
    real_subscribe = AIOKafkaConsumer.subscribe

    def subscribe(self: AIOKafkaConsumer, *args: Any, **kwargs: Any) -> Any:
        consumers.append(self)
        return real_subscribe(self, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaConsumer, "subscribe", subscribe)
    return consumers


async def test_a_delivery_in_flight_across_a_rebalance_holds_the_offset_until_every_target_has_it(
    hot_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partition is revoked and assigned back to the same notifier (an eager rebalance) while both
    targets still hold the notification. The copy fetched again waits for the first copy of each target, but
    the first copies' completions also counted against the re-added offset: the first target's answer
    finished it twice, and the offset was committed while the second target's delivery was still in flight
    (lost for that target on a crash or a stop)."""
    releases = {"a": asyncio.Event(), "b": asyncio.Event()}
    arrived: Counter[str] = Counter()

    def handler(path: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            arrived[path] += 1
            await releases[path].wait()
            return web.Response(status=200)

        return handle

    app = web.Application()
    for path in releases:
        app.router.add_post(f"/{path}", handler(path))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{bound_port(runner)}"
    consumers = subscribed_consumers(monkeypatch)
    slow = RetryPolicy(max_attempts=2, base_s=0.02, cap_s=0.1, timeout_s=60.0)
    targets = [WebhookTarget("json-a", url + "/a"), WebhookTarget("json-b", url + "/b")]
    notifier = Notifier(
        hot_settings, targets=targets, policy=slow, group_id="n-rejoin", commit_interval_s=0.1
    )
    await asyncio.to_thread(publish, hot_settings, [hot_lead(12)])
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: arrived["a"] == 1 and arrived["b"] == 1, 30, "both deliveries in flight")
        consumers[0]._coordinator.request_rejoin()  # the same partitions, revoked and assigned again
        await wait_until(lambda: notifier.pending.in_flight == 0, 15, "the revocation")
        await wait_until(lambda: notifier.pending.in_flight == 1, 15, "the notification fetched again")
        releases["a"].set()
        await asyncio.sleep(1.0)  # the commit loop runs every 0.1 s
        held = await asyncio.to_thread(committed_total, hot_settings, "n-rejoin")
        assert held == 0, "committed while the second target's delivery was still in flight"
        releases["b"].set()
        await wait_until(lambda: notifier.pending.in_flight == 0, 15, "the second target's answer")
    finally:
        for release in releases.values():
            release.set()
        stop.set()
        await asyncio.wait_for(task, 30)
        await runner.cleanup()
    assert await asyncio.to_thread(committed_total, hot_settings, "n-rejoin") == 1
    assert arrived == Counter({"a": 1, "b": 1})


async def test_records_of_a_batch_left_after_a_revocation_are_not_committed_past_deliveries_in_flight(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consume loop went on with its fetched batch after the partition was revoked (and assigned back):
    the rest of it was counted in the new assignment, finished, and committed past an earlier notification
    still being delivered (lost on a crash, or if that delivery then never settles). Here the loop waits
    on a dead letter the broker refuses while the rebalance happens."""
    state, release = receiver
    hold = asyncio.Event()
    refused: list[int] = []
    real_send = AIOKafkaProducer.send_and_wait

    async def send_and_wait(self: AIOKafkaProducer, topic: str, *args: Any, **kwargs: Any) -> Any:
        if topic == hot_settings.topic("dlq") and not hold.is_set():
            refused.append(1)
            raise KafkaTimeoutError("injected: the broker did not acknowledge the dead letter")
        return await real_send(self, topic, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaProducer, "send_and_wait", send_and_wait)
    consumers = subscribed_consumers(monkeypatch)
    commits: list[int] = []
    real_commit = notifier_group.commit

    async def commit(consumer: AIOKafkaConsumer, offsets: dict[Any, int]) -> None:
        commits.extend(offsets.values())
        await real_commit(consumer, offsets)

    monkeypatch.setattr(notifier_group, "commit", commit)

    def publish_three() -> None:  # one partition: a notification, bytes that are not Avro, a notification
        registry = default_registry()
        producer = KafkaProducer(bootstrap_servers=hot_settings.bootstrap)
        topic = hot_settings.topic("leads.hot")
        for value in (
            registry.encode("hot_lead", hot_lead(13)),
            b"not avro",
            registry.encode("hot_lead", hot_lead(14)),
        ):
            producer.send(topic, value, key=b"L-13", partition=0).get(10)
        producer.close()

    targets = [WebhookTarget("json-0", state.url + "/hang")]
    notifier = Notifier(
        hot_settings, targets=targets, policy=FAST, group_id="n-mid-batch", commit_interval_s=0.1
    )
    await asyncio.to_thread(publish_three)
    stop, task = await start(notifier)
    try:
        await wait_until(
            lambda: state.in_flight == 1 and bool(refused), 30, "hot-13 held, the letter refused"
        )
        epoch = notifier.pending.epoch(TopicPartition(hot_settings.topic("leads.hot"), 0))
        consumers[0]._coordinator.request_rejoin()
        await wait_until(
            lambda: notifier.pending.epoch(TopicPartition(hot_settings.topic("leads.hot"), 0)) > epoch,
            15,
            "the revocation",
        )
        await wait_until(lambda: notifier.assigned and bool(consumers[0].assignment()), 15, "the assignment")
        hold.set()  # the letter is taken; the loop goes on
        await asyncio.sleep(1.0)  # hot-14's delivery hangs too, so nothing may pass offset 0
        assert max(commits, default=0) == 0, f"committed {commits} while hot-13 was being delivered"
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(task, 30)


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    items = read_topic(settings, settings.topic("dlq"), idle_ms=800)
    return [i.record for i in items if isinstance(i, Decoded)]


async def test_a_notification_whose_body_cannot_be_rendered_is_dead_lettered_and_the_lane_goes_on(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: rendering a body raised (here a follow-up time past year 9999: ``datetime`` refuses it, in
    both bodies) out of the sender; the lane logged it and the notification was neither delivered nor a dead
    letter, so its partition was never committed past it again (every later notification delivered again
    after each restart). Now it is a dead letter per target, committed past only once the broker took it,
    and the notifications after it are delivered."""
    state, _ = receiver
    refusing = asyncio.Event()
    refusing.set()
    refused: list[int] = []
    real_send = AIOKafkaProducer.send_and_wait

    async def send_and_wait(self: AIOKafkaProducer, topic: str, *args: Any, **kwargs: Any) -> Any:
        if topic == hot_settings.topic("dlq") and refusing.is_set():
            refused.append(1)
            raise KafkaTimeoutError("injected: the broker did not acknowledge the dead letter")
        return await real_send(self, topic, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaProducer, "send_and_wait", send_and_wait)
    unrenderable = dict(hot_lead(1, lead_id="L-r"), sla_due_at=10**17)  # year 3170843
    records = [hot_lead(0, lead_id="L-r"), unrenderable, hot_lead(2, lead_id="L-r")]  # one partition
    targets = [
        WebhookTarget("json-0", state.url + "/ok"),
        WebhookTarget("slack-0", state.url + "/ok", "slack"),
    ]
    notifier = Notifier(
        hot_settings, targets=targets, policy=FAST, group_id="n-render", commit_interval_s=0.1
    )
    await asyncio.to_thread(publish, hot_settings, records, validate=False)
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: state.attempts["ok|hot-2"] == 2, 30, "the notification after it delivered")
        await wait_until(lambda: len(refused) >= 4, 30, "both letters refused twice")
        await asyncio.sleep(0.5)  # the commit loop runs every 0.1 s
        held = await asyncio.to_thread(committed_total, hot_settings, "n-render")
        assert held == 1, "committed past the notification before its dead letters were taken"
        refusing.clear()
        await wait_until(lambda: notifier.pending.in_flight == 0, 30, "the dead letters taken")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert state.attempts == Counter({"ok|hot-0": 2, "ok|hot-2": 2})
    letters = await asyncio.to_thread(dead_letters, hot_settings)
    assert len(letters) == 2
    for dead in letters:
        assert (dead["source_topic"], dead["offset"], dead["stage"], dead["event_id"]) == (
            hot_settings.topic("leads.hot"),
            1,
            "webhook",
            "hot-1",
        )
        assert dead["error_type"] == "WebhookRenderFailed"
        assert "year 3170843 is out of range" in dead["error"]
    assert {d["error"].split(" ")[2] for d in letters} == {"json-0", "slack-0"}
    assert await asyncio.to_thread(committed_total, hot_settings, "n-render") == 3


async def test_a_target_url_aiohttp_refuses_gives_dead_letters_and_does_not_stall_the_lane(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event]
) -> None:
    """A target URL that is no URL (``Settings`` refuses it, but targets can be given in code): aiohttp
    raises ``InvalidURL``, and describing the failure read the target's host, which raised ``ValueError``
    for it too: out of the sender, so the lane stuck as above. An invalid URL is also permanent now (it
    was retried ``max_attempts`` times)."""
    state, _ = receiver
    metrics = Metrics(CollectorRegistry(), component="notifier")
    targets = [WebhookTarget("json-0", "http://[::1/hook"), WebhookTarget("json-1", state.url + "/ok")]
    notifier = Notifier(hot_settings, targets=targets, metrics=metrics, policy=FAST, group_id="n-bad-url")
    await asyncio.to_thread(publish, hot_settings, [hot_lead(n, lead_id="L-u") for n in range(2)])
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: len(state.unique("ok")) == 2, 30, "delivery to the healthy target")
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "the give-ups")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    letters = await asyncio.to_thread(dead_letters, hot_settings)
    assert sorted((d["stage"], d["offset"], d["event_id"]) for d in letters) == [
        ("webhook", 0, "hot-0"),
        ("webhook", 1, "hot-1"),
    ]
    assert all("InvalidUrlClientError" in d["error"] and "permanent" in d["error"] for d in letters)
    assert metrics.registry.get_sample_value("leadpulse_webhook_retries_total", {"target": "json-0"}) == 0
    assert await asyncio.to_thread(committed_total, hot_settings, "n-bad-url") == 2


async def test_a_delivery_that_raises_is_dead_lettered_and_the_lane_goes_on(
    hot_settings: Settings, receiver: tuple[Receiver, asyncio.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever raises out of the sender (a bug) makes a dead letter, not a lane stuck on it for good; it
    counts as a failure of its target (it did not, and LeadpulseWebhookFailing missed those letters)."""
    state, _ = receiver
    metrics = Metrics(CollectorRegistry(), component="notifier")
    real_deliver = WebhookSender.deliver

    async def deliver(self: WebhookSender, target: WebhookTarget, hot: dict[str, Any], **kw: Any) -> Any:
        if hot["notification_id"] == "hot-1":
            raise RuntimeError("injected: a bug in the sender")
        return await real_deliver(self, target, hot, **kw)

    monkeypatch.setattr(WebhookSender, "deliver", deliver)
    notifier = Notifier(
        hot_settings,
        targets=[WebhookTarget("json-0", state.url + "/ok")],
        policy=FAST,
        group_id="n-raise",
        metrics=metrics,
    )
    await asyncio.to_thread(publish, hot_settings, [hot_lead(n, lead_id="L-x") for n in range(3)])
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: len(state.unique("ok")) == 2, 30, "the two other notifications delivered")
        await wait_until(lambda: notifier.pending.in_flight == 0, 10, "the dead letter")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    letters = await asyncio.to_thread(dead_letters, hot_settings)
    assert [(d["offset"], d["stage"], d["event_id"], d["error_type"]) for d in letters] == [
        (1, "webhook", "hot-1", "WebhookDeliveryFailed")
    ]
    assert "delivery raised RuntimeError: injected: a bug in the sender" in letters[0]["error"]
    assert await asyncio.to_thread(committed_total, hot_settings, "n-raise") == 3
    assert metrics.registry.get_sample_value("leadpulse_webhook_failures_total", {"target": "json-0"}) == 1
    assert metrics.registry.get_sample_value("leadpulse_webhook_deliveries_total", {"target": "json-0"}) == 2


async def test_webhooks_go_through_the_proxy_the_environment_names(
    hot_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site whose only way out is an HTTP proxy (HTTPS_PROXY/HTTP_PROXY, as curl and requests read them):
    the notifier's session ignored it, so every hot lead failed to connect and became a dead letter. The
    target's host does not resolve here: only a delivery through the proxy can reach it."""
    request_lines: list[str] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = next((int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:")), 0)
        await reader.readexactly(length)
        request_lines.append(head[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    proxy_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy_url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    target = WebhookTarget("json-0", "http://crm.proxied.invalid/hooks/leadpulse")
    metrics = Metrics(CollectorRegistry(), component="notifier")
    notifier = Notifier(hot_settings, targets=[target], metrics=metrics, policy=FAST, group_id="n-proxy")
    publish(hot_settings, [hot_lead(1)])
    stop, task = await start(notifier)
    try:
        await wait_until(lambda: bool(request_lines), 60, "the delivery reached the proxy")
    finally:
        stop.set()
        await task
        server.close()
    assert request_lines == ["POST http://crm.proxied.invalid/hooks/leadpulse HTTP/1.1"]
    assert dead_letter_count(hot_settings) == 0
