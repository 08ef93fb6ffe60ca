"""The sink's consumer lag, reported after each commit and every ``LAG_REPORT_S`` whatever its inserts do."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer

from sinks.sink_hooks import SinkHooks
from streams.metrics import consumer_lags
from streams.topics import spec_for

#: How often the sink reports its consumer lag, whatever its inserts do (as the worker does).
LAG_REPORT_S = 5.0


class LagReport:
    """Reports the lag of ``consumer`` behind the offsets committed so far (``committed``, the loop's) to
    ``hooks.lags`` under the ``group`` label."""

    def __init__(self, hooks: SinkHooks, group: str, topic_prefix: str) -> None:
        self.hooks = hooks
        self.group = group
        self.topic_prefix = topic_prefix
        self._next_lag = 0.0

    def report_due(self, consumer: AIOKafkaConsumer, committed: dict[tuple[str, int], int]) -> None:
        """Report the lag every ``LAG_REPORT_S``, not only after a commit: while inserts fail nothing is
        committed, and the gauge froze at its last value (often 0), so LeadpulseSinkStalled and
        LeadpulseConsumerLagGrowing could not fire during a ClickHouse outage (found by an ops audit).
        While the partitions are paused (backing off) their fetch high watermark is not refreshed, so the
        reported lag counts the records read before the pause, not those produced since."""
        if time.monotonic() >= self._next_lag:
            self._next_lag = time.monotonic() + LAG_REPORT_S
            self.report(consumer, committed)

    def report(self, consumer: AIOKafkaConsumer, committed: dict[tuple[str, int], int]) -> None:
        done, prefix = committed, self.topic_prefix
        lags = consumer_lags(
            consumer,
            lambda tp: done.get((tp.topic, tp.partition), 0),
            lambda topic: spec_for(topic, prefix).name,
        )
        self.hooks.lags(self.group, lags)
