"""Every Prometheus metric leadpulse exports, declared once, against an injectable registry.

Why a class and not module-level metrics: module globals register on prometheus_client's process-wide
``REGISTRY`` at import time, so two tests (or a worker and a sink in one ``leadpulse demo`` process) would
share counters and collide on names. Here each process builds one ``Metrics(registry)`` at start-up and
passes it down; a test builds a fresh ``CollectorRegistry`` and reads exact values with
``registry.get_sample_value(...)``.

Naming follows Prometheus conventions: base units (seconds, not ms), counters end in ``_total``, the
timestamp gauge ends in ``_timestamp_seconds``. ``deploy/prometheus/alerts.yml`` and the Grafana dashboards
use only these names; ``tests/integration/test_deploy_static.py`` checks that they do.

Labels carry only bounded, non-secret values: catalogue topic names (without the deployment prefix, so
dashboards work whatever the prefix), table names, stage ids, SLA names, error kinds and webhook target
*names* — never a URL with a token in it, a write key, an email or a lead id.
"""

from __future__ import annotations

import contextlib
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from streams.topics import INPUTS

log = logging.getLogger(__name__)

NAMESPACE = "leadpulse"

# SLA names and levels of DESIGN §4; their counters start at 0 so that the first breach shows in increase().
SLA_NAMES = ("hot_lead_follow_up", "rejection_feedback")
SLA_LEVELS = ("warning", "breach")

# Seconds from a record's Kafka timestamp to its lead_score output. A hot lead must reach a rep "within
# seconds" (DESIGN §1), so resolution is fine below 1 s; the long tail shows rebalances and recovery.
EVENT_TO_SCORE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# One ClickHouse insert of a batch (10k-100k rows): tens of ms normally, seconds under merge pressure.
SINK_INSERT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# One collector HTTP request (validate + hand to the producer buffer): sub-millisecond to tens of ms.
COLLECTOR_REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for every value, with one locked increment per bucket touched.

    Why: prometheus_client has no bulk observe, and per event its two locked increments (the sum and the
    bucket) were ~6% of the worker's CPU in a backlog (py-spy on ``leadpulse bench worker``). This reads the
    client's internals (``_upper_bounds``, ``_buckets``, ``_sum`` of an unlabelled histogram, stable since
    0.4); ``tests/unit/test_metrics.py`` checks that the exposition is exactly what ``observe`` gives."""
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bucket with value <= bound, as observe picks
        total += value
    histogram._sum.inc(total)
    for i, n in enumerate(counts):
        if n:
            histogram._buckets[i].inc(n)


def package_version() -> str:
    """Installed leadpulse version, or ``unknown`` when running from a tree that was never installed."""
    try:
        return metadata.version("leadpulse")
    except metadata.PackageNotFoundError:
        return "unknown"


def consumer_lags(
    consumer: Any,
    position: Callable[[Any], int],
    topic: Callable[[str], str],
    ends: Mapping[Any, int] | None = None,
) -> dict[tuple[str, int], int]:
    """Records behind, per partition ``consumer`` (an aiokafka consumer) owns now: its fetch high watermark
    (or ``ends[tp]``, end offsets asked of the broker, when larger) minus ``position(tp)`` (what the process
    has committed), keyed by (``topic(tp.topic)``, partition)."""
    ends = ends or {}
    lags = {}
    for tp in consumer.assignment():
        fetched = consumer.highwater(tp)
        high = max(-1 if fetched is None else fetched, ends.get(tp, -1))
        if high >= 0:
            at = position(tp)
            if fetched is not None and at > fetched:
                _warn_past_log_end(topic(tp.topic), tp.partition, at, fetched)
            lags[(topic(tp.topic), tp.partition)] = max(0, high - at)
    return lags


#: (topic, partition, position) already warned about by ``_warn_past_log_end``, once per process.
_PAST_LOG_END: set[tuple[str, int, int]] = set()


def _warn_past_log_end(topic: str, partition: int, position: int, end: int) -> None:
    """A position past the log end: the topic was recreated (or truncated) while the group kept its
    offsets. Kafka answers such a fetch with OFFSET_OUT_OF_RANGE and the consumer starts over at the
    earliest offset; Tansu 0.6 answers with no records, so the process read nothing from the partition until
    the new log passed the old offset, and its lag showed 0 (measured: position 100, log end 15, nothing
    read). Only the fetch high watermark is trusted: Tansu's ListOffsets(latest) falls short (DESIGN §11)."""
    key = (topic, partition, position)
    if key in _PAST_LOG_END:
        return
    _PAST_LOG_END.add(key)
    log.warning(
        "%s[%d]: the group's offset %d is past the log end %d (the topic was recreated or truncated while "
        "the group kept its offsets): nothing is read from this partition until its log passes %d. Reset the "
        "group's offsets to the earliest (kafka-consumer-groups --reset-offsets --to-earliest) or, on the "
        "embedded broker, start from an empty data directory (docs/operations.md)",
        topic,
        partition,
        position,
        end,
        position,
    )


class LagGauge:
    """``leadpulse_consumer_lag`` for one consumer group: each report sets the partitions owned now and
    removes the series of those owned no longer. Found by an ops audit: after a scale-out the old owner
    kept exporting its last lag for the partitions it gave away, and ``sum by (group, topic)`` (alerts,
    dashboards, autoscaling) overstated the lag until it restarted."""

    def __init__(self, gauge: Gauge, group: str) -> None:
        self.gauge = gauge
        self.group = group
        self._shown: set[tuple[str, int]] = set()

    def report(self, lags: Mapping[tuple[str, int], int]) -> None:
        """``lags``: (topic without prefix, partition) -> records behind, for every partition owned now."""
        for (topic, partition), lag in lags.items():
            self.gauge.labels(group=self.group, topic=topic, partition=str(partition)).set(lag)
        for topic, partition in self._shown - lags.keys():
            with contextlib.suppress(KeyError):
                self.gauge.remove(self.group, topic, str(partition))
        self._shown = set(lags)


class Metrics:
    """All leadpulse metrics registered on ``registry``. Build one per process and pass it down.

    ``component`` (``worker``, ``sink``, ``collector``, ``notifier``, ``demo``) only sets the
    ``leadpulse_build_info`` label; Prometheus' ``job``/``instance`` labels say which process a series
    is from.
    ``process_metrics`` adds the standard ``process_*``/``python_*`` collectors (CPU, RSS, open fds, GC) to
    the registry, which the default global registry would have had.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        component: str = "unknown",
        version: str | None = None,
        process_metrics: bool = False,
    ) -> None:
        self.registry = registry
        r = registry
        # The ``*_created`` gauges prometheus_client adds beside every counter double the series count and
        # Prometheus 2.x ignores them in the text format. The switch is process-wide; it is idempotent.
        disable_created_metrics()  # type: ignore[no-untyped-call]

        # --- process identity ---------------------------------------------------------------------------
        self.build_info = Gauge(
            "leadpulse_build_info",
            "Always 1; labels say which leadpulse version and component this process runs.",
            ["version", "component"],
            registry=r,
        )
        self.build_info.labels(version=version or package_version(), component=component).set(1)

        # --- worker: consume, score, stage, SLA -------------------------------------------------------
        self.events_consumed = Counter(
            "leadpulse_events_consumed_total",
            "Records read by the worker (valid or not), by topic: the input topics and its internal identity "
            "and account hops (leadpulse.internal.*), which carry forwarded events and lead scores.",
            ["topic"],
            registry=r,
        )
        self.events_invalid = Counter(
            "leadpulse_events_invalid_total",
            "Records the worker could not use, by topic and reason (undecodable, trailing_bytes, "
            "unknown_schema, invalid, too_large, no_identity, bad_identity, future_event, "
            "event_time_seconds, process_error); each also goes to the DLQ.",
            ["topic", "reason"],
            registry=r,
        )
        self.events_erased = Counter(
            "leadpulse_events_erased_total",
            "Input records dropped because their lead was erased with `leadpulse forget`.",
            ["topic"],
            registry=r,
        )
        self.event_to_score_seconds = Histogram(
            "leadpulse_event_to_score_seconds",
            "Seconds from a record's Kafka timestamp to the lead_score it produced (arrival to output, not "
            "event time, so late events do not skew it).",
            buckets=EVENT_TO_SCORE_BUCKETS,
            registry=r,
        )
        self.score_updates = Counter(
            "leadpulse_score_updates_total",
            "lead_score records emitted (one per score change).",
            registry=r,
        )
        self.stage_transitions = Counter(
            "leadpulse_stage_transitions_total",
            "stage_transition events emitted, by from/to stage id.",
            ["from_stage", "to_stage"],
            registry=r,
        )
        self.hot_leads = Counter(
            "leadpulse_hot_leads_total",
            "hot_lead notifications emitted (lead became mql).",
            registry=r,
        )
        self.sla_events = Counter(
            "leadpulse_sla_events_total",
            "sla_timeout events emitted, by SLA name and level (warning, breach).",
            ["sla", "level"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "leadpulse_consumer_lag",
            "Records between the group's committed/processed position and the log end, per partition "
            "this process owns (a count of records, hence no unit suffix).",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.dlq_records = Counter(
            "leadpulse_dlq_records_total",
            "Records written to the dead-letter topic, by the topic they came from and the pipeline step "
            "that rejected them (decode, validate, score, sink, collector, ...).",
            ["source_topic", "stage"],
            registry=r,
        )
        self.records_too_large = Counter(
            "leadpulse_worker_records_too_large_total",
            "Output or lead-state records the worker did not write because they exceed its record size limit "
            "(agents/worker_batch.py, MAX_RECORD_BYTES), by the topic they were for; the input records that "
            "produced them are dead-lettered.",
            ["topic"],
            registry=r,
        )
        self.sla_scan_failures = Counter(
            "leadpulse_worker_sla_scan_failures_total",
            "Times the worker's SLA scan failed for a lead (its check_timers raised, its stored state did "
            "not decode, or what it fired could not be written): the lead's SLA timers wait for a retry "
            "with back-off (agents/worker_sla_scan.py) while its events are still processed.",
            registry=r,
        )
        self.sla_scan_failing_leads = Gauge(
            "leadpulse_worker_sla_scan_failing_leads",
            "Leads of this worker whose SLA scan failed and has not worked since: their SLA warnings and "
            "breaches wait for a retry (0 once a retry works, the lead has nothing due, or moved away).",
            registry=r,
        )

        # --- sink: Kafka -> ClickHouse ------------------------------------------------------------------
        self.sink_rows = Counter(
            "leadpulse_sink_rows_total",
            "Rows inserted into ClickHouse, by table.",
            ["table"],
            registry=r,
        )
        self.sink_batches = Counter(
            "leadpulse_sink_batches_total",
            "Successful batch inserts into ClickHouse, by table.",
            ["table"],
            registry=r,
        )
        self.sink_insert_seconds = Histogram(
            "leadpulse_sink_insert_seconds",
            "Seconds one batch insert took (successful or not).",
            buckets=SINK_INSERT_BUCKETS,
            registry=r,
        )
        self.sink_failures = Counter(
            "leadpulse_sink_failures_total",
            "Failed batch inserts, by table and kind (retryable: re-sent; permanent: rows to DLQ).",
            ["table", "kind"],
            registry=r,
        )
        self.sink_rows_erased = Counter(
            "leadpulse_sink_rows_erased_total",
            "Records the sink dropped instead of storing because their lead was erased with "
            "`leadpulse forget`, by the table they were bound for.",
            ["table"],
            registry=r,
        )
        self.sink_duplicates = Counter(
            "leadpulse_sink_duplicates_total",
            "Records the sink did not store because they are stored already: the same id (event_id, "
            "transition_id, ...) came lately on the same partition (a client, producer or worker re-send), "
            "or `leadpulse replay` re-published them from ClickHouse. By the table they were bound for.",
            ["table"],
            registry=r,
        )
        self.sink_last_success = Gauge(
            "leadpulse_sink_last_success_timestamp_seconds",
            "Unix time of the last successful insert; 0 until the first one.",
            registry=r,
        )

        # --- notifier: webhooks -------------------------------------------------------------------------
        self.webhook_deliveries = Counter(
            "leadpulse_webhook_deliveries_total",
            "Webhook deliveries acknowledged (2xx), by target name (never the URL: it may hold a token).",
            ["target"],
            registry=r,
        )
        self.webhook_failures = Counter(
            "leadpulse_webhook_failures_total",
            "Webhook deliveries given up on after retries, by target name.",
            ["target"],
            registry=r,
        )
        self.webhook_retries = Counter(
            "leadpulse_webhook_retries_total",
            "Webhook delivery attempts that failed and were retried, by target name.",
            ["target"],
            registry=r,
        )
        self.notifier_progress_dropped = Counter(
            "leadpulse_notifier_progress_dropped_total",
            "Per-target progress records the notifier did not write because they exceed their size limit "
            "(agents/notifier_progress.py, MAX_RECORD_BYTES): the partition's last record still holds, so "
            "a restart may send targets again what they had finished.",
            registry=r,
        )

        # --- collector: HTTP -> Kafka -------------------------------------------------------------------
        self.collector_requests = Counter(
            "leadpulse_collector_requests_total",
            "HTTP requests answered by the collector, by status code.",
            ["status"],
            registry=r,
        )
        self.collector_events = Counter(
            "leadpulse_collector_events_total",
            "Events in collector requests, by source (write-key name) and result (accepted, invalid, bot, "
            "unauthorized, too_large, rate_limited, unavailable). A batch over the events-per-request limit "
            "counts its events as too_large; a body over the byte limit (as sent or decompressed) is never "
            "parsed, so its events are unknown and it counts 1; a wrong key in the header is refused unread "
            "and counted only in leadpulse_collector_requests_total.",
            ["source", "result"],
            registry=r,
        )
        self.collector_request_seconds = Histogram(
            "leadpulse_collector_request_seconds",
            "Seconds to answer one collector request.",
            buckets=COLLECTOR_REQUEST_BUCKETS,
            registry=r,
        )
        self.bots_dropped = Counter(
            "leadpulse_bots_dropped_total",
            "Events dropped at the collector because the user agent is a known bot.",
            registry=r,
        )
        self.events_ingested = Counter(
            "leadpulse_events_ingested_total",
            "Events published to an input topic by leadpulse's own producers (collector, produce, SDK).",
            ["topic"],
            registry=r,
        )

        # Series Prometheus should see from the start: rate()/increase() miss the first increment of a
        # series that appears already at 1, so a lone SLA breach or the first event on a topic would vanish.
        for spec in INPUTS:
            self.events_consumed.labels(topic=spec.name)
            self.events_ingested.labels(topic=spec.name)
        for sla in SLA_NAMES:
            for level in SLA_LEVELS:
                self.sla_events.labels(sla=sla, level=level)

        if process_metrics:
            # Fresh collectors bound to this registry; the library's module-level ones belong to REGISTRY.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    def count_output(self, schema: str, record: dict[str, Any]) -> None:
        """Count one acknowledged worker output by its kind."""
        if schema == "lead_score":
            self.score_updates.inc()
        elif schema == "stage_transition":
            self.stage_transitions.labels(from_stage=record["from_stage"], to_stage=record["to_stage"]).inc()
        elif schema == "hot_lead":
            self.hot_leads.inc()
        elif schema == "sla_timeout":
            self.sla_events.labels(sla=record["sla"], level=record["level"]).inc()
