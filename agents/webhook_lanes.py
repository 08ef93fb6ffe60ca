"""Webhook delivery lanes: one per target, a queue of notification jobs, its memory of notifications
already handled, and a put into a full queue that gives way when the notifier stops.

Why one lane per target: targets do not wait for each other (``agents/notifications.py``).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from sinks.webhook import WebhookTarget
from streams.stoppable import finished_before_stop


@dataclass(frozen=True)
class Job:
    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes
    hot: dict[str, Any]
    epoch: int = 0  # PendingOffsets.epoch of its partition when it was added


class Lane:
    """One target's queue, workers and memory of recent notification ids.

    A replayed duplicate of a notification already handled (delivered or dead-lettered), or still being
    delivered, is not sent again: it waits for the first copy's outcome. Receivers still dedup by the
    idempotency key, since this memory is per process and bounded. The outcome is whether the first copy
    was settled (delivered or dead-lettered); when it was not (stopping, or a bug), the copy waiting for it
    is not settled either and its offset stays uncommitted.
    """

    def __init__(self, target: WebhookTarget, queue_size: int, remember: int = 10_000, key: str = "") -> None:
        self.target = target
        self.key = key  # its progress key (agents/notifier_progress.py): stable across restarts
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_size)
        self.handled: OrderedDict[str, asyncio.Future[bool]] = OrderedDict()
        self.remember = remember

    def claim(self, notification_id: str) -> asyncio.Future[bool] | None:
        """None when this caller must deliver; else the first copy's outcome to wait for."""
        existing = self.handled.get(notification_id)
        if existing is not None:
            return existing
        self.handled[notification_id] = asyncio.get_running_loop().create_future()
        while len(self.handled) > self.remember:
            oldest, future = next(iter(self.handled.items()))
            if not future.done():
                break
            del self.handled[oldest]
        return None

    def finish(self, notification_id: str, delivered: bool, settled: bool = True) -> None:
        """Wake the copies waiting for this outcome. A notification given up (dead-lettered) is forgotten,
        so that ``leadpulse dlq replay --stage webhook`` delivers it once the receiver is fixed, without a
        restart of this process; so is one left unsettled (``settled=False``)."""
        future = self.handled.get(notification_id)
        if future is not None and not future.done():
            future.set_result(settled)
        if not delivered:
            self.handled.pop(notification_id, None)


async def put_job(queue: asyncio.Queue[Job], job: Job, stop: asyncio.Event) -> bool:
    """``queue.put(job)`` unless ``stop`` is set first (then False, and the job is not queued): with the
    receiver down and the queue full, a plain put waited for room forever and the process never stopped."""
    if stop.is_set():
        return False
    if not queue.full():
        queue.put_nowait(job)
        return True
    # a put cancelled before it found room has not queued the job; one that found room counts as done
    return await finished_before_stop(queue.put(job), stop)
