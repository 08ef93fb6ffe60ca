"""The sink's consumer lag, reported after each commit and every ``LAG_REPORT_S`` whatever its inserts do."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from sinks.sink_hooks import SinkHooks
from streams.metrics import consumer_lags
from streams.topics import spec_for

log = logging.getLogger(__name__)

#: How often the sink reports its consumer lag, whatever its inserts do (as the worker does).
LAG_REPORT_S = 5.0
#: How long a lag report waits for the broker's end offsets of paused partitions; on timeout it reports
#: what the last fetches saw (a broker outage must not hold up the loop that answers SIGTERM).
END_OFFSETS_TIMEOUT_S = 1.0


class LagReport:
    """Reports the lag of ``consumer`` behind the offsets committed so far (``committed``, the loop's) to
    ``hooks.lags`` under the ``group`` label."""

    def __init__(self, hooks: SinkHooks, group: str, topic_prefix: str) -> None:
        self.hooks = hooks
        self.group = group
        self.topic_prefix = topic_prefix
        self._next_lag = 0.0

    async def report_due(self, consumer: AIOKafkaConsumer, committed: dict[tuple[str, int], int]) -> None:
        """Report the lag every ``LAG_REPORT_S``, not only after a commit: while inserts fail nothing is
        committed, and the gauge froze at its last value (often 0), so LeadpulseSinkStalled and
        LeadpulseConsumerLagGrowing could not fire during a ClickHouse outage (found by an ops audit)."""
        if time.monotonic() >= self._next_lag:
            self._next_lag = time.monotonic() + LAG_REPORT_S
            ends = await self._paused_ends(consumer)
            self.report(consumer, committed, ends)

    async def _paused_ends(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """The broker's end offsets of the partitions paused while the sink backs off. Paused partitions are
        not fetched, so their fetch high watermark stops where the pause began and the lag gauge missed
        everything produced during a ClickHouse outage: LeadpulseConsumerLagGrowing could not see it grow.
        Asking the broker (ListOffsets) fixes that. On Tansu 0.6 the answer is the start of the last batch
        + 1 (DESIGN §11), which is short of the end by that batch's size but still grows with every new
        batch; the report takes the larger of the two numbers."""
        paused = list(consumer.paused())
        if not paused:
            return {}
        try:
            return dict(await asyncio.wait_for(consumer.end_offsets(paused), END_OFFSETS_TIMEOUT_S))
        except Exception as exc:  # broker away or slow: report what the fetches saw, try again next time
            log.debug("end offsets of paused partitions unavailable: %r", exc)
            return {}

    def report(
        self,
        consumer: AIOKafkaConsumer,
        committed: dict[tuple[str, int], int],
        ends: dict[TopicPartition, int] | None = None,
    ) -> None:
        done, prefix = committed, self.topic_prefix
        lags = consumer_lags(
            consumer,
            lambda tp: done.get((tp.topic, tp.partition), 0),
            lambda topic: spec_for(topic, prefix).name,
            ends or {},
        )
        self.hooks.lags(self.group, lags)
