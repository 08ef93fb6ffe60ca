"""A lane's delivery of notifications to its target: when a job is settled for that lane (delivered,
dead-lettered, dropped as erased, or handled by an earlier copy) and when it is left unsettled (stopping).

Why apart from the consumer loop (``agents/notifications.py``): this decides what one target gets and what
counts as done; the loop only feeds the lanes and commits what is done (``agents/notifier_group.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer

from agents.notifier_dead_letters import send_dead_letter
from agents.webhook_lanes import Job, Lane
from sinks.webhook import DeliveryResult, Stopping, WebhookSender, without_url

if TYPE_CHECKING:
    from agents.notifications import Notifier

log = logging.getLogger("agents.notifications")  # the name it logged under before the split: lines unchanged


async def work_lane(
    notifier: Notifier, lane: Lane, sender: WebhookSender, producer: AIOKafkaProducer
) -> None:
    """One of a lane's workers: runs until cancelled when the notifier stops."""
    while True:
        job = await lane.queue.get()
        try:
            if await _settle(notifier, lane, sender, producer, job):
                notifier.pending.done(job.tp, job.offset, job.epoch, lane.key)
        except Exception:  # a bug in one delivery must not kill the lane; the offset stays uncommitted
            log.exception("notifier lane %s failed on %s@%s", lane.target.name, job.tp, job.offset)
        finally:
            lane.queue.task_done()


def erased(notifier: Notifier, job: Job) -> bool:
    return notifier.erasures is not None and notifier.erasures.is_erased(job.hot.get("lead_id"))


async def _settle(
    notifier: Notifier, lane: Lane, sender: WebhookSender, producer: AIOKafkaProducer, job: Job
) -> bool:
    """Whether ``job`` is settled for this lane: delivered or dead-lettered, here or by an earlier copy.
    False when the notifier stopped first: no dead letter, and its offset is not committed."""
    notification_id = str(job.hot["notification_id"])
    first = lane.claim(notification_id)
    if first is not None:
        return await asyncio.shield(first)  # a cancelled waiter must not cancel the others' outcome
    delivered = settled = False
    if erased(notifier, job):
        log.info("lead %s is erased: notification %s not delivered", job.hot["lead_id"], notification_id)
        lane.finish(notification_id, True)
        return True
    try:
        delivered = await _deliver(notifier, lane, sender, producer, job)
        settled = True
    except Stopping:
        pass
    finally:
        lane.finish(notification_id, delivered, settled)
    return settled


async def _deliver(
    notifier: Notifier, lane: Lane, sender: WebhookSender, producer: AIOKafkaProducer, job: Job
) -> bool:
    """Whether the receiver took it; a notification it did not take goes to the DLQ, and so does one
    whose body cannot be rendered or whose delivery raised (a bug): raised out of here, the lane left it
    neither delivered nor a dead letter and its partition was never committed past it again."""
    try:
        result = await sender.deliver(lane.target, job.hot, withdrawn=lambda: erased(notifier, job))
    except Stopping:
        raise
    except Exception as exc:
        log.exception("delivery to %s of %s@%s raised", lane.target.name, job.tp, job.offset)
        error = f"delivery raised {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
        error = without_url(error, lane.target)  # the URL may hold a token
        # a failure of the target as the sender counts one: LeadpulseWebhookFailing missed these letters
        notifier.metrics.webhook_failures.labels(target=lane.target.name).inc()
        result = DeliveryResult(lane.target, False, 0, None, error)
    if not result.ok and erased(notifier, job):
        # erased while it was retried: a dead letter would put its email back on a topic, and a replay
        # of it would deliver it
        log.info(
            "lead %s erased during its delivery: notification %s dropped",
            job.hot["lead_id"],
            job.hot["notification_id"],
        )
        return True
    if not result.ok:
        reason = result.describe()
        log.warning(
            "%s; lead %s notification %s to the DLQ",
            reason,
            job.hot["lead_id"],
            job.hot["notification_id"],
        )
        await send_dead_letter(
            notifier,
            producer,
            job.tp,
            job.offset,
            job.key,
            job.value,
            "webhook",
            reason,
            error_type="WebhookDeliveryFailed" if result.rendered else "WebhookRenderFailed",
        )
    return bool(result.ok)
