"""Where the collector hands accepted events: a Kafka producer behind the ``Publisher`` protocol.

Why a protocol: the collector answers 202 only after ``publish`` returns (the broker acknowledged), and the
collector bench compares the aiokafka producer used in production with the SDK's kafka-python producer
bridged into asyncio, on the same HTTP path (``bench/collector_bench.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from streams.backoff import backoff_seconds
from streams.broker import aiokafka_client_config
from streams.kafka_close import start_client, stop_producer
from streams.partitioner import key_hash
from streams.settings import Settings

log = logging.getLogger(__name__)

Message = tuple[str, bytes | None, bytes]  # (topic, key, value)

#: How long the producer's close may flush at a stop (AioKafkaPublisher.stop).
FLUSH_AT_STOP_S = 1.0


class ProducerStartFailed(OSError):
    """The collector's Kafka producer did not start for an OS-level reason (a CA file missing or unreadable,
    a TLS context refused). An OSError without an errno, named as the producer's: not a busy port."""


class PublishError(Exception):
    """The broker did not acknowledge a batch; the client gets 503 and should retry."""


class PublishCut(PublishError):
    """The collector is stopping and its grace for requests in flight is over: 503, the client re-sends."""


class Publisher(Protocol):
    async def start(self) -> None: ...
    async def publish(self, messages: Sequence[Message]) -> None: ...
    async def stop(self) -> None: ...


class AioKafkaPublisher:
    """aiokafka producer: native asyncio, measured faster than bridging kafka-python futures (see bench).

    Why a publish timeout: with the broker unreachable aiokafka would hold a request for its default 40 s
    before failing. ``LEADPULSE_COLLECTOR_PUBLISH_TIMEOUT_S`` bounds the wait, and the producer's own
    request timeout (which also expires queued batches) is set to the same value, so a 503 comes back in
    time for the client to retry, and events of a failed request are not sent much later behind its back.
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str | None = None,
        linger_ms: int = 5,
        timeout_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap or settings.bootstrap
        self.linger_ms = linger_ms
        self.timeout_s = settings.collector_publish_timeout_s if timeout_s is None else timeout_s
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=self.linger_ms,
            max_batch_size=256 * 1024,
            enable_idempotence=False,  # idempotence fails on Tansu (DESIGN §11)
            request_timeout_ms=int(self.timeout_s * 1000),
            **aiokafka_client_config(self.settings),
        )
        await start_client(producer)  # a failed one is closed: start() may be called again
        self._producer = producer

    async def publish(self, messages: Sequence[Message]) -> None:
        futures: list[asyncio.Future[Any]] = []
        partitions: dict[str, list[int]] = {}
        try:
            async with asyncio.timeout(self.timeout_s):
                producer = self._producer
                for topic, key, value in messages:
                    partition = None  # no key: aiokafka picks one
                    if key is not None:
                        known = partitions.get(topic)
                        if known is None:  # the list aiokafka's own partitioner would get, once a request
                            known = partitions[topic] = list(await producer.partitions_for(topic))
                        partition = partition_for(key, known)
                    futures.append(await producer.send(topic, value=value, key=key, partition=partition))
                # One request's records share a few producer batches, so once the first future is done
                # the rest mostly are too: awaiting them in turn costs far less than gather()'s callback
                # per future, and still raises the first failure.
                for future in futures:
                    await future
        except asyncio.CancelledError:  # cut at a stop (InFlight): the records sent may still fail or land
            _retrieve_all(futures)
            raise
        except TimeoutError as exc:
            _retrieve_all(futures)
            raise PublishError(
                f"broker {self.bootstrap} did not acknowledge within {self.timeout_s:g} s "
                "(LEADPULSE_COLLECTOR_PUBLISH_TIMEOUT_S)"
            ) from exc
        except Exception as exc:  # aiokafka raises KafkaError subclasses
            _retrieve_all(futures)
            raise PublishError(
                f"broker {self.bootstrap} did not acknowledge: {type(exc).__name__}: {exc}"
            ) from exc

    async def stop(self) -> None:
        """Flush and close, the flush given up after ``FLUSH_AT_STOP_S``: every request was answered before
        (``InFlight``), so what is still unsent belongs to requests answered 503, which their clients re-send;
        a hung broker held this for the publish timeout (up to 300 s) per batch."""
        if self._producer is not None:
            await stop_producer(self._producer, FLUSH_AT_STOP_S)


class InFlight:
    """The publishes under way, so that a stop can end them: ``begin_stop`` (``StoppingRunner``, and aiohttp's
    on_shutdown) sets ``stopping`` (requests begun after it are answered 503 unread: streams/collector_stop.py
    tells them from those whose head was arriving); after ``grace_s`` each publish still waiting raises
    ``PublishCut`` (its request is answered 503), and so does any publish begun later.

    Why: a request in flight waited for the broker's acknowledgement up to the publish timeout (up to 300 s),
    and the stop waited for it, past an orchestrator's grace period (SIGKILL, the client's connection dropped
    unanswered). Cutting is a cancellation of the request's own task (aiohttp runs one per request), taken
    back here with ``uncancel``: no task or callback per publish on the request path."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.stopping = False
        self.cut_off = False
        self._waiting: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    async def publish(self, publisher: Publisher, messages: Sequence[Message]) -> None:
        if self.cut_off:
            raise PublishCut("the collector is stopping")
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            await publisher.publish(messages)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            task.uncancel()
            raise PublishCut("the collector is stopping and its grace for requests in flight ended") from None
        finally:
            self._waiting.discard(task)
            self._cut.discard(task)

    async def begin_stop(self, app: object = None) -> None:
        """Stopping: publishes still waiting in ``grace_s`` are cut, each request answered 503."""
        if self.stopping:
            return
        self.stopping = True
        log.info(
            "collector stopping: %d request(s) waiting for the broker get up to %g s "
            "(LEADPULSE_COLLECTOR_STOP_GRACE_S), new ones 503",
            len(self._waiting),
            self.grace_s,
        )
        self._timer = asyncio.get_running_loop().call_later(self.grace_s, self._cut_all, self.grace_s)

    def _cut_all(self, grace_s: float) -> None:
        self.cut_off = True
        for task in self._waiting - self._cut:
            self._cut.add(task)
            task.cancel()
        if self._cut:
            log.warning(
                "collector stopping: %d request(s) still waiting for the broker after the %g s grace "
                "answered 503 (their clients re-send; records already sent may still reach the broker)",
                len(self._cut),
                grace_s,
            )

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


async def start_waiting(
    publisher: Publisher, wait_s: float, on_retry: Callable[[BaseException, float], None]
) -> None:
    """``publisher.start()``, retried while the broker cannot be reached, for at most ``wait_s`` seconds.

    Why: an orchestrator may start the collector before Kafka (a stack coming up, a broker restarting), and
    exiting at once made that a crash loop with a growing back-off. Only aiokafka's KafkaConnectionError
    (no bootstrap server answered, or let the client in: aiokafka says the same for both) and an attempt
    cut by the deadline are retried; any other error (a CA file missing) is raised at once.
    ``on_retry(error, seconds left)`` is told of each failure. After ``wait_s`` a KafkaConnectionError names
    the wait, its setting and the last failure; ``leadpulse collector`` reports it in one line, exit 1."""
    from aiokafka.errors import KafkaConnectionError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    last: BaseException | None = None
    for attempt in itertools.count(1):
        try:
            async with asyncio.timeout_at(deadline):
                await publisher.start()
            return
        except KafkaConnectionError as exc:
            last = exc
        except TimeoutError as exc:  # mostly the deadline cutting an attempt: keep the failure before it
            last = exc if last is None else last
        left = deadline - loop.time()
        if left <= 0 or last is None:
            # aiokafka's errors name their class in str(); a TimeoutError: no attempt got an answer at all
            shown = str(last) if isinstance(last, KafkaConnectionError) else "no answer before the wait ended"
            raise KafkaConnectionError(
                f"no broker answered within {wait_s:g} s (LEADPULSE_COLLECTOR_BROKER_WAIT_S); last "
                f"attempt: {shown}"
            ) from last
        on_retry(last, left)
        await asyncio.sleep(min(left, backoff_seconds(attempt, 0.5, 5.0)))


class KafkaPythonPublisher:
    """The SDK's kafka-python producer with its futures bridged into asyncio (kept for the bench)."""

    def __init__(self, settings: Settings, bootstrap: str | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self._producer: Any = None

    async def start(self) -> None:
        from streams.producer import Producer

        self._producer = await asyncio.to_thread(
            Producer, self.settings, bootstrap=self.bootstrap, linger_ms=5
        )

    async def publish(self, messages: Sequence[Message]) -> None:
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[Any]] = []
        for topic, key, value in messages:
            waiter: asyncio.Future[Any] = loop.create_future()
            future = self._producer.send_encoded(topic, key, value)
            future.add_callback(_resolve, loop, waiter)
            future.add_errback(_reject, loop, waiter)
            waits.append(waiter)
        try:
            await asyncio.gather(*waits)
        except Exception as exc:
            raise PublishError(f"broker did not acknowledge: {type(exc).__name__}: {exc}") from exc

    async def stop(self) -> None:
        if self._producer is not None:
            await asyncio.to_thread(self._producer.close)


def partition_for(key: bytes, all_partitions: list[int]) -> int:
    """Kafka's default partitioner (murmur2 of the key, as aiokafka, kafka-python and the Java client
    compute it), with the pure-Python hash memoised per key: a tracker batch carries one visitor's id on
    every event, and the profile showed the partitioner at ~10% of the collector's CPU."""
    return all_partitions[key_hash(key) % len(all_partitions)]


def _retrieve_all(futures: Sequence[asyncio.Future[Any]]) -> None:
    """After a failed publish: the futures not awaited may fail too; mark their errors as seen (as gather()
    did) so asyncio does not log "exception was never retrieved" for each record of the request."""
    for future in futures:
        future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _resolve(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any], metadata: Any) -> None:
    """Runs on kafka-python's sender thread: hand the result to the event loop's thread."""
    loop.call_soon_threadsafe(_settle, waiter, metadata, None)


def _reject(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any], exc: BaseException) -> None:
    loop.call_soon_threadsafe(_settle, waiter, None, exc)


def _settle(waiter: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if waiter.done():
        return
    if exc is None:
        waiter.set_result(result)
    else:
        waiter.set_exception(exc)
