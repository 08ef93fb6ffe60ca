"""Starting, stopping and committing with aiokafka clients when the broker is gone.

aiokafka 0.14 bug (aio-libs/aiokafka#647, open): ``AIOKafkaConsumer.stop()`` cancels the fetcher's pending
fetch tasks and awaits them. A fetch task that failed to reach the broker sits in ``asyncio.sleep(retry
backoff)`` *inside* its ``except KafkaError`` block, where cancellation is not caught, so the
``CancelledError`` escapes ``stop()``. Every process then died on SIGTERM during a broker outage with a
40-line traceback, and stop() never got to close the client ("Unclosed AIOKafkaConsumer").

``stop_consumer`` tells that stray cancellation from a real one (our own task being cancelled, which is
re-raised) and finishes what ``stop()`` skipped. It touches aiokafka's private fetcher and client, which
is why it lives in this one module.

aiokafka's ``commit()`` and ``committed()`` wait for a group coordinator *forever* (its
``ensure_coordinator_known`` loops), so during an outage one such call held a process past its SIGTERM until
it was killed (the sink, when the broker went away while it read its new partitions' commits).
``COMMIT_TIMEOUT_S`` bounds them: a commit that does not happen only means records are read again after a
restart, and every output is idempotent.

A broker that accepts connections but never answers (hung, paused, a half-open network path) held
``consumer.stop()`` for 40 to 80 s: ``GroupCoordinator.close()`` awaits its coordination task and then a
LeaveGroup request, each bounded only by ``request_timeout_ms`` (40 s). Found by an ops audit (``kill -STOP``
of the broker): SIGTERM took the worker 41 s, the sink 110 s and the notifier 120 s, past their grace
periods. ``stop_consumer`` and ``stop_producer`` now give the clean close ``STOP_TIMEOUT_S`` and then close
the client without it: leaving the group is best effort, the session timeout evicts a member that did not.
``stop_consumer`` says whether the group was left (the coordinator acknowledged LeaveGroup), so a caller can
log what happened. It also sends LeaveGroup for generation 0, the first generation on Tansu, which aiokafka
skips (it only leaves when ``generation > 0``, Kafka's first generation being 1): before, a member of a
group's first generation never left it on Tansu, and its partitions waited for the session timeout.

``commit`` and ``committed`` bound the wait with ``asyncio.timeout``, not ``asyncio.wait_for``: on Python
3.11 ``wait_for`` swallows a cancellation that arrives as the awaited call completes (it returns the
result; CPython gh-86296, fixed in 3.12). The notifier's commit loop commits every 0.5 s; cancelled at its
stop at that moment, it went on committing, and the notifier's stop waited for it for good (seen once in a
test: the notifier still running 30 s after stop).

``start_client`` closes a client whose ``start()`` failed (no broker at start-up): aiokafka leaves it open,
and the process then ended with "Unclosed AIOKafkaConsumer" after its one-line error. A start cancelled
(a stop) while its bootstrap waits for the Metadata answer leaves that connection open too: aiokafka's
``bootstrap`` closes it on a ``KafkaError`` or a timeout only, and it is not among the client's connections,
so the client's close misses it. A notifier stopped while its broker hung there ended with "Unclosed
AIOKafkaConnection" (a fresh-clone CI run of stop 33). ``start_client`` therefore records the connections
opened during its start, by wrapping the ``create_conn`` that ``aiokafka.client`` calls (only while a
``start_client`` runs in the caller's context; elsewhere the wrapper just passes through), and closes any
left open after a failed start.

kafka-python 3.0.12 (``streams.reader``'s consumers): ``KafkaConsumer.close()`` hands work to the client's
IO thread and waits for it with no time limit (``ConsumerCoordinator.close`` runs
``_net.run(_on_close_prepare_async)``, then the LeaveGroup step, each a ``threading.Event().wait()``; its
``timeout_ms`` bounds only the auto-commit and the LeaveGroup answer). When that thread does not run the
work, close never returns: found with a ``read_topic`` generator abandoned and finalized at interpreter exit
(its broker stopped), where the daemon IO thread no longer runs and the process hung for good (seen for
over 10 minutes). ``close_kafka_consumer`` closes in a daemon thread and gives up after
``KAFKA_PYTHON_CLOSE_TIMEOUT_S`` with a warning; at interpreter exit it does not close at all (no thread
can start or run then, and the process's sockets close with it).

``in_daemon_thread`` runs any other blocking kafka-python call (a topic check, the cluster id) for an
asyncio caller. ``asyncio.to_thread`` could not be given up: a cancelled caller left the call running in the
loop's executor, and ``asyncio.run`` waits for that executor's threads at exit, so SIGTERM to a notifier
whose broker hung during its start took kafka-python's 30 s bootstrap timeout (28 s measured, past the
25 s the shutdown tests allow: ``tests/faults/test_notifier_start_broker_hung.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import aiokafka.client as _aiokafka_client
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.conn import AIOKafkaConnection
from aiokafka.conn import create_conn as _create_conn
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest
from kafka import KafkaConsumer

from streams.stoppable import finished_before_stop

log = logging.getLogger(__name__)
T = TypeVar("T")


class CoordinatorUnreachable(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The group coordinator did not answer in time (the broker is away); a KafkaError so that callers'
    existing "commit refused: re-read later" handling covers it."""


#: Longest wait for a commit or a committed-offset read (a healthy broker answers in milliseconds).
COMMIT_TIMEOUT_S = 10.0
#: Longest wait for the last commit at a stop (the notifier's and the sink's; a healthy broker answers in
#: milliseconds). Given up, what was done since the last commit is done again after a restart (deliveries
#: sent again, the sink's records read again and not stored twice); waited for as long as any other
#: commit, it held a stop with the broker hung or gone ``COMMIT_TIMEOUT_S`` before the clients' closes.
STOP_COMMIT_TIMEOUT_S = 5.0
#: Longest wait for a client's clean close (a consumer leaving its group, a producer flushing) before it is
#: closed without it; a healthy broker answers in milliseconds, and the grace periods are 30 to 60 s.
STOP_TIMEOUT_S = 10.0
#: Longest wait for the connections to close once the clean close was given up.
FORCE_CLOSE_TIMEOUT_S = 3.0
#: Longest wait for a kafka-python consumer's close (a group-less reader's takes milliseconds).
KAFKA_PYTHON_CLOSE_TIMEOUT_S = 5.0


async def commit(
    consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], timeout_s: float | None = None
) -> None:
    """``consumer.commit(offsets)``, raising ``CoordinatorUnreachable`` after ``timeout_s``
    (``COMMIT_TIMEOUT_S``)."""
    timeout_s = COMMIT_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: see the module's docstring
            await consumer.commit(offsets)
    except TimeoutError:
        _retrieve_abandoned_commits(consumer)
        raise CoordinatorUnreachable(
            f"no group coordinator answered a commit within {timeout_s:g}s"
        ) from None
    except asyncio.CancelledError:
        _retrieve_abandoned_commits(consumer)
        raise


def _retrieve_abandoned_commits(consumer: AIOKafkaConsumer) -> None:
    """aiokafka sends a commit in a task of its own behind ``asyncio.shield``: a commit given up goes on, and
    with the broker hung it failed when the client closed, reported at exit as "Task exception was never
    retrieved" with a traceback (found by tests/faults/test_notifier_stop_broker_hung.py). Its exception is
    now retrieved (logged at debug) by a callback on the consumer's commit tasks.

    Not cancelled: another caller may be awaiting the same kind of task on the same consumer (the notifier's
    commit loop, rebalance listener and stop commit), and cancelling every commit task raised CancelledError
    in a caller nobody cancelled (tests/faults/test_commit_given_up_alone.py). A commit given up may so still
    be applied later: it commits only what its caller asked, and every caller counts it as not committed
    (at worst a restart re-reads from an earlier offset; duplicates are dropped by id downstream)."""
    coordinator = getattr(consumer, "_coordinator", None)
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if getattr(coro, "__qualname__", "") == "GroupCoordinator._do_commit_offsets" and (
            frame is not None and frame.f_locals.get("self") is coordinator
        ):
            task.add_done_callback(_retrieved)


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.debug("a commit given up earlier failed: %s: %s", type(error).__name__, error)


async def committed(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """``consumer.committed(tp)``, raising ``CoordinatorUnreachable`` after ``COMMIT_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(COMMIT_TIMEOUT_S):
            offset: int | None = await consumer.committed(tp)
            return offset
    except TimeoutError:
        raise CoordinatorUnreachable(
            f"no group coordinator answered for the committed offset of {tp.topic}[{tp.partition}] "
            f"within {COMMIT_TIMEOUT_S:g}s"
        ) from None


async def group_commits(
    consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]
) -> dict[TopicPartition, int] | None:
    """The group's committed offset of each of ``tps`` that has one, so a lag metric is right from the
    start (counted from 0, a restarted process showed each partition's whole log as lag). None, with a
    warning, when the coordinator does not answer: only the metric suffers, until the next commit."""
    ordered = sorted(tps)
    try:
        found = await asyncio.gather(*(committed(consumer, tp) for tp in ordered))
    except KafkaError as exc:
        log.warning("could not read the group's committed offsets for the lag metric: %s", exc)
        return None
    return {tp: offset for tp, offset in zip(ordered, found, strict=True) if offset is not None}


async def stop_consumer(consumer: AIOKafkaConsumer) -> bool:
    """``consumer.stop()`` that completes during a broker outage, within about ``STOP_TIMEOUT_S`` even when
    the broker does not answer; a cancellation of the caller still wins.

    Returns whether the consumer left its group: True only when the group coordinator acknowledged the
    LeaveGroup request (its partitions move to the other members at once). False for a consumer without a
    group or membership, and when leaving failed or was given up: the coordinator evicts the member after the
    session timeout."""
    left = _watch_leave_group(consumer)
    stopping = asyncio.ensure_future(consumer.stop())
    try:
        done, _ = await asyncio.wait({stopping}, timeout=STOP_TIMEOUT_S)
    except asyncio.CancelledError:
        stopping.cancel()
        raise
    if not done:
        log.warning(
            "Kafka consumer did not close within %gs (the broker does not answer): closed without leaving "
            "the group; the group coordinator evicts it after the session timeout",
            STOP_TIMEOUT_S,
        )
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await stopping
        await _force_close_consumer(consumer)
        return False
    if stopping.cancelled():
        log.debug("aiokafka#647: a fetch task's cancellation escaped consumer.stop(); finishing the close")
        await _force_close_consumer(consumer)
    else:
        stopping.result()  # stop()'s own error, if any, as before
    return left[0]


def _watch_leave_group(consumer: AIOKafkaConsumer) -> list[bool]:
    """Replace the consumer's group coordinator's leave step (called by ``stop()``) with one that records
    whether the coordinator acknowledged LeaveGroup, and that also leaves generation 0 (Tansu's first;
    aiokafka skips it). Returns a one-item list set to True once the group is left."""
    left = [False]
    coordinator: Any = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "_maybe_leave_group"):  # no group (group_id=None)
        return left

    async def leave_group() -> None:
        # As aiokafka's _maybe_leave_group: one attempt, not with a static membership (group_instance_id).
        if coordinator.generation >= 0 and coordinator.member_id and coordinator._group_instance_id is None:
            request = LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
            try:
                response = await coordinator._send_req(request)
            except KafkaError as exc:
                log.warning("leaving consumer group %s failed: %s", coordinator.group_id, exc)
            else:
                left[0] = response.error_code == 0
                if not left[0]:
                    log.warning(
                        "leaving consumer group %s refused (error code %d)",
                        coordinator.group_id,
                        response.error_code,
                    )
        coordinator.reset_generation()

    coordinator._maybe_leave_group = leave_group
    return left


async def _force_close_consumer(consumer: AIOKafkaConsumer) -> None:
    """Finish what an interrupted ``consumer.stop()`` skipped: the coordinator's and the fetcher's tasks, then
    the client's connections (aiokafka's private attributes; every step tolerates a missing one)."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    fetcher: Any = getattr(consumer, "_fetcher", None)
    tasks: list[Any] = [
        getattr(coordinator, name, None)
        for name in ("_coordination_task", "_heartbeat_task", "_commit_refresh_task", "_reset_committed_task")
    ]
    tasks.append(getattr(fetcher, "_fetch_task", None))
    tasks.extend(getattr(fetcher, "_pending_tasks", ()))
    if fetcher is not None:
        fetcher._closed = True
    for task in tasks:
        if isinstance(task, asyncio.Future) and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, FORCE_CLOSE_TIMEOUT_S)
    await _close_client(getattr(consumer, "_client", None))


async def _close_client(client: Any) -> None:
    if client is None:
        return
    try:
        await asyncio.wait_for(client.close(), FORCE_CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.warning("Kafka connections did not close within %gs; abandoned", FORCE_CLOSE_TIMEOUT_S)
    except Exception as exc:  # closing is best effort here
        log.debug("closing the Kafka client: %s", exc)


async def stop_clients(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, producer_timeout_s: float = STOP_TIMEOUT_S
) -> tuple[bool, bool]:
    """Leave the group (``stop_consumer``) and flush and close the producer (``stop_producer``) at once:
    with the broker hung each waits its own bound, and one after the other they took up a whole grace
    period. Both run to their end before an error of either is raised. Returns (left the group, flushed)."""
    closed = await asyncio.gather(
        stop_consumer(consumer), stop_producer(producer, producer_timeout_s), return_exceptions=True
    )
    for result in closed:
        if isinstance(result, BaseException):
            raise result
    return bool(closed[0]), bool(closed[1])


async def stop_producer(producer: AIOKafkaProducer, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """``producer.stop()`` (flush what is batched, close) within about ``timeout_s``; a broker that does
    not answer no longer holds the process for ``request_timeout_ms`` per batch. Returns False when the flush
    was given up: records not acknowledged by then are lost to this producer, so a caller must not have
    committed the input they came from (leadpulse commits only after the acknowledgement)."""
    stopping = asyncio.ensure_future(producer.stop())
    try:
        done, _ = await asyncio.wait({stopping}, timeout=timeout_s)
    except asyncio.CancelledError:
        stopping.cancel()
        raise
    if done:
        stopping.result()
        return True
    log.warning(
        "Kafka producer did not flush and close within %gs (the broker does not answer): closed without it",
        timeout_s,
    )
    stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await stopping
    sender: Any = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if isinstance(task, asyncio.Future) and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, FORCE_CLOSE_TIMEOUT_S)
    await _close_client(getattr(producer, "client", None))
    return False


async def start_unless_stopped(
    consumer: AIOKafkaConsumer, stopped: Callable[[], bool], poll_s: float = 0.2
) -> bool:
    """``start_client(consumer)``, given up when ``stopped()`` turns true first: returns False then, with the
    consumer closed.

    Why: a subscribed consumer's ``start()`` waits for its first partition assignment, and with the broker
    gone it waits for ever. A worker whose broker died while it was joining its group ignored SIGTERM until
    SIGKILL (found by killing the broker a few seconds into a worker's start: still running 10 min after
    SIGTERM). ``stopped`` is polled, so the sink's ``threading.Event`` serves as well as an asyncio one; a
    cancelled start closes the consumer on its way out (``start_client``)."""
    return await finished_before_stop(start_client(consumer), stopped, poll_s=poll_s)


class _OpenedInStart:
    """The connections aiokafka opens while one ``start_client`` runs (recorded by ``_recording_create_conn``
    while ``recording``; tasks the start spawns inherit the context, so recording ends with the start)."""

    def __init__(self) -> None:
        self.recording = True
        self.connections: list[AIOKafkaConnection] = []


_opened_in_start: contextvars.ContextVar[_OpenedInStart | None] = contextvars.ContextVar(
    "opened_in_start", default=None
)


async def _recording_create_conn(*args: Any, **kwargs: Any) -> AIOKafkaConnection:
    conn = await _create_conn(*args, **kwargs)
    opened = _opened_in_start.get()
    if opened is not None and opened.recording:
        opened.connections.append(conn)
    return conn


# aiokafka's client opens every connection through the name it imported (a bootstrap's included)
_aiokafka_client.create_conn = _recording_create_conn


async def start_client(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """``client.start()``; if it fails, the client is closed before the error propagates, and so is any
    connection its start opened that the client's close does not know (see the module's docstring)."""
    opened = _OpenedInStart()
    token = _opened_in_start.set(opened)
    try:
        await client.start()
    except BaseException:
        with contextlib.suppress(Exception):
            if isinstance(client, AIOKafkaConsumer):
                await stop_consumer(client)
            else:
                await stop_producer(client)
        for conn in opened.connections:
            if conn.connected():
                conn.close()
        raise
    finally:
        opened.recording = False
        opened.connections.clear()
        _opened_in_start.reset(token)


def close_kafka_consumer(consumer: KafkaConsumer, timeout_s: float | None = None) -> bool:
    """``consumer.close()`` (kafka-python) within ``timeout_s`` (``KAFKA_PYTHON_CLOSE_TIMEOUT_S``); whether
    it finished. Nothing is committed (``autocommit=False``): the callers read without a group. A close
    that does not finish in time is left to its daemon thread, with a warning; at interpreter exit none is
    attempted (a thread started then never runs, and ``Thread.start`` would wait for it for good)."""
    timeout_s = KAFKA_PYTHON_CLOSE_TIMEOUT_S if timeout_s is None else timeout_s
    if sys.is_finalizing():
        return False
    failure: list[BaseException] = []

    def close() -> None:
        try:
            consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
        except BaseException as exc:  # reported by the caller's thread
            failure.append(exc)

    closer = threading.Thread(target=close, name="kafka-python-close", daemon=True)
    closer.start()
    closer.join(timeout_s)
    if closer.is_alive():
        log.warning(
            "a Kafka consumer (kafka-python) did not close within %g s; left to close in the background",
            timeout_s,
        )
        return False
    if failure:
        log.warning(
            "closing a Kafka consumer (kafka-python) failed: %s: %s", type(failure[0]).__name__, failure[0]
        )
        return False
    return True


async def in_daemon_thread(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` in a daemon thread of its own: a cancelled caller returns at once and the process
    does not wait for the call at exit (see the module's docstring); the call finishes, or not, unseen."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()  # as asyncio.to_thread: the caller's context variables

    def settle(result: T | None, error: BaseException | None) -> None:
        if outcome.done():  # the caller was cancelled meanwhile
            return
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = context.run(call, *args), None
        except BaseException as exc:  # handed to the caller's loop
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for it any more
            loop.call_soon_threadsafe(settle, result, error)

    name = f"kafka-python-{getattr(call, '__name__', 'call')}"
    threading.Thread(target=run, name=name, daemon=True).start()
    return await outcome
