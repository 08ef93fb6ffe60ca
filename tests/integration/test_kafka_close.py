"""``streams.kafka_close`` against a real broker that goes away: commits are bounded, stop completes; a
kafka-python reader (``streams.reader``) abandoned after its broker stopped closes within a bound."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka.coordinator.consumer import ConsumerCoordinator

from streams import kafka_close
from streams.broker import EmbeddedBroker, create_topics, start_private_broker
from streams.producer import Producer
from streams.reader import read_topic
from streams.settings import load_settings

pytestmark = pytest.mark.integration


async def test_commit_calls_give_up_and_stop_completes_once_the_broker_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_close, "COMMIT_TIMEOUT_S", 1.0)
    broker = start_private_broker(tmp_path / "tansu.log")
    try:
        create_topics(broker.bootstrap, "kc.")
        topic = "kc.events.web_visits"
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id="kc-group",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        await consumer.start()
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "no assignment within 30 s"
            await consumer.getmany(timeout_ms=200)
        tp = TopicPartition(topic, 0)
        await kafka_close.commit(consumer, {tp: 0})  # healthy: answered at once
        assert await kafka_close.committed(consumer, tp) == 0

        broker.stop()
        await consumer.getmany(timeout_ms=1500)  # let the fetcher fail and sit in its retry backoff
        started = time.monotonic()
        with pytest.raises(kafka_close.CoordinatorUnreachable, match="commit within 1s"):
            await kafka_close.commit(consumer, {tp: 1})
        with pytest.raises(kafka_close.CoordinatorUnreachable, match=r"web_visits\[0\]"):
            await kafka_close.committed(consumer, tp)
        assert time.monotonic() - started < 10

        await asyncio.wait_for(kafka_close.stop_consumer(consumer), 20)
        # client.close() clears its metadata task: not done = the "Unclosed AIOKafkaConsumer" case
        assert consumer._client._sync_task is None, "stop_consumer left the client open"
    finally:
        broker.stop()


async def test_a_start_waiting_for_its_first_assignment_gives_up_when_stopped_after_the_broker_died(
    tmp_path: Path,
) -> None:
    """A subscribed consumer's ``start()`` waits for its first assignment, for ever once the broker is gone:
    a worker, sink or notifier whose broker died while it joined its group ignored SIGTERM until SIGKILL."""
    broker = start_private_broker(tmp_path / "tansu.log")

    def joining() -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            group_id="kc-join",
            enable_auto_commit=False,
            session_timeout_ms=6000,  # Tansu answers a join after about half of it
            heartbeat_interval_ms=1000,
        )
        consumer.subscribe(["kc.events.web_visits"])
        return consumer

    try:
        create_topics(broker.bootstrap, "kc.")
        plain, stoppable = joining(), joining()
        stop = asyncio.Event()
        plain_start = asyncio.ensure_future(kafka_close.start_client(plain))
        stoppable_start = asyncio.ensure_future(kafka_close.start_unless_stopped(stoppable, stop.is_set))
        await asyncio.sleep(1.0)  # both bootstrapped and asking to join
        assert not plain_start.done() and not stoppable_start.done()
        broker.stop()
        await asyncio.sleep(1.0)
        stop.set()
        started = time.monotonic()
        assert await asyncio.wait_for(stoppable_start, 20) is False
        assert time.monotonic() - started < 12  # the close is bounded (STOP_TIMEOUT_S)
        assert stoppable._closed
        # the premise: without the stop, start() is still waiting
        assert not plain_start.done()
        plain_start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await plain_start
    finally:
        broker.stop()


#: A process that reads a topic, stops its broker and exits with the ``read_topic`` generator abandoned (not
#: read to its end, never closed): it is finalized at interpreter exit.
_ABANDONING_READER = """
import sys
from pathlib import Path
from streams.broker import create_topics, start_private_broker
from streams.producer import Producer
from streams.reader import read_topic
from streams.settings import load_settings

base = load_settings()
broker = start_private_broker(Path(sys.argv[1]))
try:
    create_topics(broker.bootstrap, "ab.")
    settings = base.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_prefix": "ab."})
    with Producer(settings) as producer:
        for n in range(20):
            producer.send("hot_lead", {
                "lead_id": f"L-{n}", "notification_id": f"hot-{n}", "score": 130.0, "fit": 50.0,
                "behaviour": 80.0, "reason": "score_threshold", "became_hot_at": 1_750_000_000_000,
            })
    items = read_topic(settings, settings.topic("leads.hot"), idle_ms=500)
    next(items)
finally:
    broker.stop()
print("exiting with the reader abandoned", flush=True)
"""


def test_a_reader_abandoned_after_its_broker_stopped_does_not_hang_the_process_at_exit(
    tmp_path: Path,
) -> None:
    """kafka-python's ``KafkaConsumer.close()`` waits for its IO thread with no time limit; a generator
    finalized at interpreter exit (daemon threads no longer run) held the process there for good, in
    ``read_topic``'s ``finally``. Reproduced here: on the old code this process never exits."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _ABANDONING_READER, str(tmp_path / "tansu.log")],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the process hung at exit with the reader abandoned: {exc.stdout!r}") from None
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exiting with the reader abandoned" in done.stdout
    print(f"process with an abandoned reader ran {time.monotonic() - started:.1f} s in all")


def test_a_reader_whose_consumer_close_hangs_is_closed_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever holds kafka-python's close (its coordinator's close made to hang here), closing an abandoned
    ``read_topic`` generator returns after ``KAFKA_PYTHON_CLOSE_TIMEOUT_S``, with a warning."""
    monkeypatch.setattr(kafka_close, "KAFKA_PYTHON_CLOSE_TIMEOUT_S", 1.0, raising=False)
    release = threading.Event()
    real_close = ConsumerCoordinator.close

    def hanging_close(self: ConsumerCoordinator, *args: Any, **kwargs: Any) -> None:
        release.wait()
        real_close(self, *args, **kwargs)

    monkeypatch.setattr(ConsumerCoordinator, "close", hanging_close)
    base = load_settings()
    broker = start_private_broker(tmp_path / "tansu.log")
    try:
        create_topics(broker.bootstrap, "rc.")
        settings = base.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_prefix": "rc."})
        with Producer(settings) as producer:
            for n in range(5):
                producer.send(
                    "hot_lead",
                    {
                        "lead_id": f"L-{n}",
                        "notification_id": f"hot-{n}",
                        "score": 130.0,
                        "fit": 50.0,
                        "behaviour": 80.0,
                        "reason": "score_threshold",
                        "became_hot_at": 1_750_000_000_000,
                    },
                )
        items = read_topic(settings, settings.topic("leads.hot"), idle_ms=500)
        next(items)
        broker.stop()
        closing = threading.Thread(target=items.close, daemon=True)
        started = time.monotonic()
        closing.start()
        closing.join(20)
        assert not closing.is_alive(), "the abandoned reader's close still hangs after 20 s"
        assert time.monotonic() - started < 5
        assert "did not close within 1 s" in caplog.text
    finally:
        release.set()
        broker.stop()


class _FirstAnswerOnly:
    """A proxy to ``upstream`` that relays each connection's first request and its answer (ApiVersions, sent
    as a connection opens), then reads nothing more: a broker that hangs right after a client connected, so
    that the client's next request (a bootstrap's Metadata) waits."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.held = asyncio.Event()  # a connection got its first answer and is held
        self.closed_by_client = asyncio.Event()  # a held connection was closed by the client
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            size = await reader.readexactly(4)
            up_writer.write(size + await reader.readexactly(int.from_bytes(size, "big")))
            size = await up_reader.readexactly(4)
            writer.write(size + await up_reader.readexactly(int.from_bytes(size, "big")))
            self.held.set()
            while await reader.read(65536):  # the next requests: never relayed
                pass
            self.closed_by_client.set()
        finally:
            up_writer.close()
            writer.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def test_a_producer_start_cancelled_while_its_bootstrap_waits_for_metadata_closes_that_connection(
    broker: EmbeddedBroker,
) -> None:
    """aiokafka's bootstrap does not close its connection when cancelled while its Metadata request waits
    (it closes it on a KafkaError or a timeout only): a SIGTERM to a notifier whose broker hung there ended
    with "Unclosed AIOKafkaConnection" (a fresh-clone CI run of stop 33). ``start_client`` closes it."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context.get("message"))))
    proxy = _FirstAnswerOnly((broker.host, broker.port))
    try:
        producer = AIOKafkaProducer(bootstrap_servers=await proxy.start(), request_timeout_ms=30000)
        starting = asyncio.create_task(kafka_close.start_client(producer))
        await asyncio.wait_for(proxy.held.wait(), 10)
        await asyncio.sleep(0.2)  # the Metadata request is sent and waits
        assert not starting.done()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        del starting
        await asyncio.wait_for(proxy.closed_by_client.wait(), 5)
        gc.collect()
        await asyncio.sleep(0)
        assert not any("Unclosed" in message for message in reported), reported
    finally:
        proxy.close()
        loop.set_exception_handler(None)
