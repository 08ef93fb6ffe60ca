"""An erased lead whose state in the changelog does not decode: the erasure reads the lead's state for its
stitched anonymous ids, outside any guard. The worker neither exits at the erasure nor at each restore (a
crash loop); the lead's key is tombstoned and the part it could not do is dead-lettered.

Faults are injected into real objects against the real broker, as in test_worker_start_over.py; the erasure
log is the real one (``streams.erasures.ErasureLog``), fed by ``publish_erasure`` like ``leadpulse forget``.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from agents.rules import load_rules
from agents.worker import LeadWorker
from streams.erasures import erasure_record, publish_erasure
from streams.metrics import Metrics
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_worker_start_over import _dead_letters, _seen, _visit
from tests.integration.worker_harness import durable_states, ready_with_erasures, wait_until

pytestmark = pytest.mark.integration

GARBAGE = b"\x00not a lead state"


def test_an_erased_lead_whose_state_does_not_decode_neither_stops_the_worker_nor_stays(
    broker_settings: Settings,
) -> None:
    """Two leads whose stored states do not decode (a core bug, or a state written by another version): one
    erased before the worker starts (the restore's purge of erased leads), one while it runs (a drained
    erasure). ``apply_erasures`` decoded the state for its aliases and raised: out of the restore, then out
    of the poll loop's reload, and the worker exited at every start; or out of the poll loop at once. Now the
    lead's key is tombstoned as usual, the erasure's own anonymous ids too, and what it could not read (the
    lead's stitched anonymous ids) is dead-lettered (source the erasure log, the lead as key, no value)."""
    before, during, other = "L-undec-before", "L-undec-during", "L-undec-other"
    now = int(time.time() * 1000)
    state_topic = broker_settings.topic("leadpulse.internal.lead_state")
    with Producer(broker_settings) as producer:
        producer.send_encoded(state_topic, before, GARBAGE)
        producer.send_encoded(state_topic, during, GARBAGE)
    publish_erasure(broker_settings, erasure_record(before, [], now))
    worker = LeadWorker(broker_settings, load_rules(None), Metrics(CollectorRegistry(), component="worker"))

    async def scenario() -> None:
        async with ready_with_erasures(worker, broker_settings) as running:
            assert before.encode() not in worker.store
            await asyncio.to_thread(publish_erasure, broker_settings, erasure_record(during, [], now))
            await wait_until(lambda: during.encode() not in worker.store, running, timeout_s=30)
            with Producer(broker_settings) as producer:  # the worker goes on
                producer.send("web_visit", {**_visit(other, "visit", now), "lead_id": other})
            await wait_until(lambda: _seen(worker, other, f"{other}-visit"), running, timeout_s=30)

    asyncio.run(scenario())
    durable = durable_states(broker_settings)
    assert before.encode() not in durable and during.encode() not in durable, "not tombstoned"
    letters = [
        d for d in _dead_letters(broker_settings) if d["source_topic"].endswith("leadpulse.internal.erasures")
    ]
    assert {d["key"] for d in letters} >= {before.encode(), during.encode()}, letters
    assert all(d["value"] is None and d["stage"] == "process" for d in letters), letters
