"""The notifier: consumes ``leads.hot`` in its own consumer group and delivers each notification to every
configured webhook target.

Why its own process and group: delivery waits on other people's servers. Running it apart from the worker
means a slow or dead endpoint can never hold back scoring, and its offsets move independently.

Why one lane (queue + tasks) per target: targets do not wait for each other. A notification is "done" when
every lane has delivered it or given up on it (then it is a dead letter on ``dlq`` with the original bytes,
stage ``webhook``); ``PendingOffsets`` commits a partition only up to its lowest unfinished offset, so a crash
re-delivers, never loses (receivers dedup by the idempotency key). Above that offset, which target finished
what is written after commits (``agents/notifier_progress.py``) and a target is not sent again what it
finished: Slack has no idempotency key. A hanging target is bounded by its
per-attempt timeout times its attempts; meanwhile its lane's queue absorbs up to ``queue_size`` notifications
before the consumer waits.

Stopping (SIGTERM) takes about ``stop_grace_s`` at most, whatever the receivers do: the consumer stops
waiting for room in a full lane queue, no new attempt starts, a retry backoff ends at once (the sender's
``Stopping``), and an attempt still waiting for its answer after ``stop_grace_s`` is abandoned. A
notification so left is not dead-lettered and its offset is not committed: the next process delivers it
(a receiver that had it drops the copy by its idempotency key). Found by an ops audit: with the receiver
down a stop took the 10 s HTTP timeout, and with a full lane queue it never happened.

This module is the Kafka shell: it takes notifications off ``leads.hot`` into the lanes and stops cleanly.
What one target gets and when a notification counts as done is ``agents/notifier_delivery.py``; writing a
dead letter, ``agents/notifier_dead_letters.py``; the group's offsets, ``agents/notifier_group.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from agents.notifier_dead_letters import send_dead_letter
from agents.notifier_delivery import work_lane
from agents.notifier_group import GROUP_ID, GroupOffsets, NotifierRebalance, PendingOffsets, notifier_group
from agents.notifier_progress import ALL, ProgressLog, target_keys
from agents.notifier_stop import stop_clients
from agents.webhook_lanes import Job, Lane, put_job
from schemas.errors import SchemaError
from schemas.registry import SchemaRegistry, default_registry
from sinks.webhook import (
    MIN_WEBHOOK_SECRET,
    RetryPolicy,
    Stopping,
    WebhookSender,
    WebhookTarget,
    policy_from_settings,
    targets_from_settings,
)
from streams.broker import aiokafka_client_config, group_timeouts
from streams.kafka_close import start_client, start_unless_stopped
from streams.metrics import LagGauge, Metrics
from streams.settings import Settings
from streams.stoppable import finished_before_stop
from streams.topics import HOT_LEADS

log = logging.getLogger(__name__)


class ErasureCheck(Protocol):
    """What the notifier needs of ``streams.erasures.ErasureLog``."""

    def is_erased(self, identity: str | None) -> bool: ...


class Notifier:
    """Build, then ``await run(stop_event)``. Tests pass ``targets`` and a short ``policy``.

    Leads erased with ``leadpulse forget`` are not notified: ``run`` reads the erasure log (or uses
    ``erasures``) and a notification of an erased lead still on ``leads.hot`` (queued, retried, or put back by
    ``leadpulse dlq replay``) is settled without a delivery and without a dead letter (docs/privacy.md).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        targets: Sequence[WebhookTarget] | None = None,
        metrics: Metrics | None = None,
        registry: SchemaRegistry | None = None,
        policy: RetryPolicy | None = None,
        group_id: str | None = None,
        inherit_from: str | None = None,
        concurrency: int | None = None,
        queue_size: int = 10_000,
        commit_interval_s: float = 0.5,
        bootstrap: str | None = None,
        stop_grace_s: float = 2.0,
        erasures: ErasureCheck | None = None,
    ) -> None:
        self.settings = settings
        self.erasures = erasures
        self.targets = list(targets if targets is not None else targets_from_settings(settings))
        if not self.targets:
            raise ValueError(
                "no webhook targets: set LEADPULSE_WEBHOOK_URLS and/or LEADPULSE_SLACK_WEBHOOK_URLS "
                "(JSON lists of URLs)"
            )
        self.metrics = metrics or Metrics(CollectorRegistry(), component="notifier")
        if group_id is None:
            group_id = notifier_group(settings)
            if inherit_from is None and group_id != GROUP_ID:
                inherit_from = GROUP_ID  # earlier releases used the unprefixed group
        self.inherit_from = inherit_from if inherit_from != group_id else None
        # labels use catalogue names, whatever the prefix (the alerts and dashboards match them)
        label = group_id.removeprefix(settings.topic_prefix) if settings.topic_prefix else group_id
        self.lag_gauge = LagGauge(self.metrics.consumer_lag, label)
        self.registry = registry or default_registry()
        self.policy = policy or policy_from_settings(settings)
        self.group_id = group_id
        self.concurrency = concurrency if concurrency is not None else settings.webhook_concurrency
        self.commit_interval_s = commit_interval_s
        self.stop_grace_s = stop_grace_s
        self.bootstrap = bootstrap or settings.bootstrap
        self.lanes = [
            Lane(t, queue_size, key=k) for t, k in zip(self.targets, target_keys(self.targets), strict=True)
        ]
        for target in self.targets:  # at 0 from the start: rate() and increase() miss a series' first step
            for counter in (self.metrics.webhook_deliveries, self.metrics.webhook_failures):
                counter.labels(target=target.name)
            self.metrics.webhook_retries.labels(target=target.name)
        self.pending = PendingOffsets()
        self.topic = settings.topic(HOT_LEADS.name)
        self.assigned = False
        self.progress = ProgressLog(
            settings,
            group_id=group_id,
            bootstrap=self.bootstrap,
            dropped=self.metrics.notifier_progress_dropped,
        )
        self.offsets = GroupOffsets(
            settings,
            group_id=group_id,
            inherit_from=self.inherit_from,
            bootstrap=self.bootstrap,
            topic=self.topic,
            lag_gauge=self.lag_gauge,
            pending=self.pending,
            progress=self.progress,
        )
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        if not secret and any(t.kind == "json" for t in self.targets):
            # DESIGN §10: bodies are signed. Unsigned, a receiver cannot tell our webhooks from anyone's.
            # Slack's incoming-webhook URL is its own secret, so Slack-only setups need none.
            raise ValueError(
                "LEADPULSE_WEBHOOK_SECRET is not set: webhooks to LEADPULSE_WEBHOOK_URLS are signed with it "
                "(HMAC-SHA256, docs/ingestion.md); set a random secret and give it to the receivers"
            )
        if secret and len(secret) < MIN_WEBHOOK_SECRET:
            # Anyone with one signed request can try short keys offline, then sign hot leads of their own.
            # A warning, not a refusal: receivers already verify with the configured secret, and a notifier
            # that stopped on upgrade would leave every hot lead undelivered until both sides rotate it.
            log.warning(
                "LEADPULSE_WEBHOOK_SECRET is short (%d characters): use at least %d random characters, e.g. "
                "`openssl rand -hex 32`, and give the new one to the receivers",
                len(secret),
                MIN_WEBHOOK_SECRET,
            )
        self._secret = secret
        self.stopping = asyncio.Event()  # run()'s: a dead letter not taken is sent again until it is set
        self.revocations = 0  # rebalances seen (NotifierRebalance): a fetched batch is left after one

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self.assigned, {"targets": [t.name for t in self.targets], "in_flight": self.pending.in_flight}

    async def run(self, stop: asyncio.Event) -> None:
        if self.erasures is not None:
            await self._run(stop)
            return
        from streams.erasures import ErasureLog

        own = ErasureLog(self.settings.model_copy(update={"kafka_bootstrap": self.bootstrap}))
        # Every erasure known before the first notification is taken. The read can take a minute (a long
        # log, a slow broker): a stop meanwhile ends it at once (nothing is taken yet); ErasureLog.start
        # closes its consumer when cancelled.
        if not await finished_before_stop(own.start(), stop):
            log.info("notifier stopped while reading the erasure log")
            return
        self.erasures = own
        try:
            await self._run(stop)
        finally:
            self.erasures = None
            await own.stop()

    def group_consumer(self) -> AIOKafkaConsumer:
        """The notifier's group member; its timeouts follow the broker's kind as the erasure log found it
        (an erasure check a caller gave has none: Tansu assumed, the tests' broker)."""
        return AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **group_timeouts(getattr(self.erasures, "tansu", True)),
            **aiokafka_client_config(self.settings),
        )

    async def _run(self, stop: asyncio.Event) -> None:
        self.stopping = stop
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=False,
            **aiokafka_client_config(self.settings),
        )
        # With the broker hung, start() waits 40 s for a bootstrap answer, then fails: a stop meanwhile ends
        # it at once (nothing is taken yet). Found by tests/faults/test_notifier_start_broker_hung.py:
        # SIGTERM took 38 s and the notifier exited 1, "cannot reach the Kafka broker".
        if not await finished_before_stop(start_client(producer), stop):
            log.info("notifier stopped before its producer started")
            return
        self.progress.producer = producer
        # built only now: an aiokafka client that is never started still complains "Unclosed" at exit
        consumer = self.group_consumer()
        consumer.subscribe([self.topic], listener=NotifierRebalance(self, consumer))
        try:
            log.info("joining consumer group %s on %s", self.group_id, self.topic)
            if not await start_unless_stopped(consumer, stop.is_set):
                log.info("notifier stopped before its first partition assignment")
                return
            # trust_env: HTTPS_PROXY/HTTP_PROXY/NO_PROXY as curl and requests read them (a site whose only way
            # out is a proxy had every hot lead dead-lettered: the session ignored them)
            async with aiohttp.ClientSession(trust_env=True) as session:
                sender = WebhookSender(
                    session, self._secret, policy=self.policy, metrics=self.metrics, stop=stop
                )
                workers = [
                    asyncio.create_task(
                        work_lane(self, lane, sender, producer), name=f"lane-{lane.target.name}"
                    )
                    for lane in self.lanes
                    for _ in range(self.concurrency)
                ]
                committer = asyncio.create_task(self._commit_loop(consumer))
                try:
                    await self._consume(consumer, producer, stop)
                    await self._drain(timeout_s=self.stop_grace_s)
                finally:
                    committer.cancel()
                    for task in workers:
                        task.cancel()
                    await asyncio.gather(committer, *workers, return_exceptions=True)
                    await self.offsets.commit(consumer, final=True, stopping=True)
        finally:
            await stop_clients(consumer, producer)  # at once, the producer's flush bounded (notifier_stop.py)

    async def _consume(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            revocations = self.revocations
            for msg in (msg for messages in batches.values() for msg in messages):
                if self.revocations != revocations:
                    # Revoked while this loop waited (a full lane queue, a dead letter not taken): the rest
                    # is fetched again from the committed offsets. Taken on, it counted in the new
                    # assignment and was committed past earlier notifications still being delivered.
                    break
                if not await self._take(msg, producer, stop):
                    return  # stopping: this offset and the later ones stay uncommitted

    async def _take(self, msg: ConsumerRecord, producer: AIOKafkaProducer, stop: asyncio.Event) -> bool:
        """Queue ``msg`` to every lane that has not finished it before a restart, or dead-letter it if it
        does not decode; False when stopping first."""
        tp = TopicPartition(msg.topic, msg.partition)
        value = msg.value or b""
        skipped = self.pending.skipped(tp, msg.offset, msg.timestamp)
        lanes = [] if ALL in skipped else [lane for lane in self.lanes if lane.key not in skipped]
        if not lanes:  # every target finished it (or its dead letter was taken) before
            self.pending.add(tp, msg.offset, 0, skipped)
            return True
        try:
            _, hot = self.registry.decode(value, expect="hot_lead")
        except SchemaError as exc:
            # open until the dead letter is acknowledged: counted as finished at once, the commit loop (or
            # the final commit) went past a record that was nowhere
            self.pending.add(tp, msg.offset, 1)
            epoch = self.pending.epoch(tp)
            try:
                await send_dead_letter(self, producer, tp, msg.offset, msg.key, value, "decode", exc)
            except Stopping:
                return False
            self.pending.done(tp, msg.offset, epoch, ALL)
            return True
        self.pending.add(tp, msg.offset, len(lanes), skipped)
        job = Job(tp, msg.offset, msg.key, value, hot, self.pending.epoch(tp))
        for lane in lanes:
            if not await put_job(lane.queue, job, stop):
                return False
        return True

    async def _drain(self, timeout_s: float) -> None:
        """Let attempts under way finish for up to ``timeout_s``; queued notifications and those in a
        backoff are left at once (the sender stops)."""
        try:
            await asyncio.wait_for(asyncio.gather(*(lane.queue.join() for lane in self.lanes)), timeout_s)
        except TimeoutError:
            log.warning(
                "notifier stopping with attempts still waiting for an answer after %g s; abandoned",
                timeout_s,
            )
        if self.pending.in_flight:
            log.info(
                "notifier stopping with %d notification(s) not delivered; they are delivered after a restart "
                "(offsets not committed, no dead letters)",
                self.pending.in_flight,
            )

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        """Runs until cancelled when consuming ends; the final commit follows the drain."""
        while True:
            await asyncio.sleep(self.commit_interval_s)
            await self.offsets.commit(consumer)

    @property
    def committed(self) -> dict[TopicPartition, int]:
        return dict(self.offsets.committed)


async def run_notifier(
    settings: Settings, stop: asyncio.Event, *, metrics: Metrics | None = None, ops_port: int | None = None
) -> None:
    """Entry point of ``leadpulse notifier``: serve /metrics, /health, /ready and deliver until ``stop``."""
    from streams.web import start_ops_server

    metrics = metrics or Metrics(CollectorRegistry(), component="notifier", process_metrics=True)
    notifier = Notifier(settings, metrics=metrics)
    runner = None
    if ops_port is not None:
        runner = await start_ops_server(settings.web_host, ops_port, metrics.registry, notifier.ready)
    try:
        await notifier.run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
