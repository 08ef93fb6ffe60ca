"""What the ClickHouse sink loop reports as it goes (inserts, dead letters, lag, erasures, duplicates)."""

from __future__ import annotations

import time
from typing import Any

from streams.metrics import LagGauge

#: The ``table`` label of ``leadpulse_sink_failures_total{kind="unavailable"}``: ClickHouse could not be
#: reached (at start, or for the stored offsets a resume reads), so no insert into any table can be tried.
UNAVAILABLE_TABLE = "all"


class SinkHooks:
    """Metric seam: the default does nothing; ``MetricsHooks`` feeds ``streams.metrics.Metrics``."""

    def inserted(self, table: str, rows: int, seconds: float, failure: str | None) -> None: ...
    def dead_lettered(self, source_topic: str, stage: str) -> None: ...
    def lags(self, group: str, lags: dict[tuple[str, int], int]) -> None: ...
    def erased(self, table: str, rows: int) -> None: ...
    def duplicate(self, table: str) -> None: ...
    def unavailable(self) -> None: ...


class MetricsHooks(SinkHooks):
    def __init__(self, metrics: Any) -> None:
        self.m = metrics
        self._lag_gauges: dict[str, LagGauge] = {}

    def inserted(self, table: str, rows: int, seconds: float, failure: str | None) -> None:
        self.m.sink_insert_seconds.observe(seconds)
        if failure is None:
            self.m.sink_rows.labels(table=table).inc(rows)
            self.m.sink_batches.labels(table=table).inc()
            self.m.sink_last_success.set(time.time())
        else:
            self.m.sink_failures.labels(table=table, kind=failure).inc()

    def dead_lettered(self, source_topic: str, stage: str) -> None:
        self.m.dlq_records.labels(source_topic=source_topic, stage=stage).inc()

    def lags(self, group: str, lags: dict[tuple[str, int], int]) -> None:
        gauge = self._lag_gauges.get(group)
        if gauge is None:
            gauge = self._lag_gauges[group] = LagGauge(self.m.consumer_lag, group)
        gauge.report(lags)

    def erased(self, table: str, rows: int) -> None:
        self.m.sink_rows_erased.labels(table=table).inc(rows)

    def duplicate(self, table: str) -> None:
        self.m.sink_duplicates.labels(table=table).inc()

    def unavailable(self) -> None:
        self.m.sink_failures.labels(table=UNAVAILABLE_TABLE, kind="unavailable").inc()
