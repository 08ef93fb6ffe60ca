"""The metrics catalogue: exact values from a fresh registry, names that follow Prometheus conventions."""

from __future__ import annotations

import re

import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import SLA_LEVELS, SLA_NAMES, Metrics, consumer_lags, observe_many
from streams.topics import INPUTS

pytestmark = pytest.mark.unit

# Label names that would carry personal data or secrets if anyone added them.
FORBIDDEN_LABELS = {"lead_id", "anonymous_id", "email", "url", "write_key", "key", "token", "password", "dsn"}
# Gauges that count records and so have no base unit to name (DESIGN §9 lists the lag metric by this name).
# counts of things, which Prometheus' naming guide leaves without a unit suffix: records behind, and leads
# whose SLA scan waits for a retry
UNITLESS_GAUGES = {"leadpulse_consumer_lag", "leadpulse_worker_sla_scan_failing_leads"}
UNIT_SUFFIXES = ("_seconds", "_bytes", "_ratio", "_timestamp_seconds")


def exposition(registry: CollectorRegistry) -> list[tuple[str, str]]:
    """(family name, type) of every leadpulse family in the text a scrape would return."""
    text = generate_latest(registry).decode()
    return [
        (family.name, family.type)
        for family in text_string_to_metric_families(text)
        if family.name.startswith("leadpulse_")
    ]


def test_two_registries_hold_independent_counters() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    a, b = Metrics(first), Metrics(second)
    a.events_consumed.labels(topic="events.web_visits").inc(3)
    b.events_consumed.labels(topic="events.web_visits").inc()
    assert first.get_sample_value("leadpulse_events_consumed_total", {"topic": "events.web_visits"}) == 3
    assert second.get_sample_value("leadpulse_events_consumed_total", {"topic": "events.web_visits"}) == 1


def test_counters_are_read_back_exactly_under_their_total_names() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.events_invalid.labels(topic="events.downloads", reason="undecodable").inc(2)
    m.stage_transitions.labels(from_stage="lead", to_stage="mql").inc()
    m.sink_rows.labels(table="events").inc(1000)
    m.sink_batches.labels(table="events").inc()
    m.sink_failures.labels(table="events", kind="retryable").inc()
    m.webhook_retries.labels(target="slack-sales").inc(4)
    m.dlq_records.labels(source_topic="events.downloads", stage="decode").inc(2)
    m.collector_events.labels(source="website", result="bot").inc(5)
    m.bots_dropped.inc(5)
    m.hot_leads.inc()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("leadpulse_events_invalid_total", topic="events.downloads", reason="undecodable") == 2
    assert value("leadpulse_stage_transitions_total", from_stage="lead", to_stage="mql") == 1
    assert value("leadpulse_sink_rows_total", table="events") == 1000
    assert value("leadpulse_sink_batches_total", table="events") == 1
    assert value("leadpulse_sink_failures_total", table="events", kind="retryable") == 1
    assert value("leadpulse_webhook_retries_total", target="slack-sales") == 4
    assert value("leadpulse_dlq_records_total", source_topic="events.downloads", stage="decode") == 2
    assert value("leadpulse_collector_events_total", source="website", result="bot") == 5
    assert value("leadpulse_bots_dropped_total") == 5
    assert value("leadpulse_hot_leads_total") == 1
    assert value("leadpulse_score_updates_total") == 0


def test_histograms_count_observations_in_seconds_buckets() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.event_to_score_seconds.observe(0.02)
    m.event_to_score_seconds.observe(3.0)
    assert registry.get_sample_value("leadpulse_event_to_score_seconds_count") == 2
    assert registry.get_sample_value("leadpulse_event_to_score_seconds_sum") == pytest.approx(3.02)
    assert registry.get_sample_value("leadpulse_event_to_score_seconds_bucket", {"le": "0.025"}) == 1
    assert registry.get_sample_value("leadpulse_event_to_score_seconds_bucket", {"le": "5.0"}) == 2


def test_lag_gauge_and_last_success_timestamp_hold_the_value_set() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    assert registry.get_sample_value("leadpulse_sink_last_success_timestamp_seconds") == 0
    m.sink_last_success.set(1_700_000_000.5)
    m.consumer_lag.labels(group="leadpulse-sink", topic="events.web_visits", partition="3").set(42)
    assert registry.get_sample_value("leadpulse_sink_last_success_timestamp_seconds") == 1_700_000_000.5
    labels = {"group": "leadpulse-sink", "topic": "events.web_visits", "partition": "3"}
    assert registry.get_sample_value("leadpulse_consumer_lag", labels) == 42


def test_build_info_names_version_and_component() -> None:
    registry = CollectorRegistry()
    Metrics(registry, component="sink", version="9.9.9")
    labels = {"version": "9.9.9", "component": "sink"}
    assert registry.get_sample_value("leadpulse_build_info", labels) == 1


def test_known_topics_and_sla_levels_start_at_zero_so_the_first_increment_counts() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for spec in INPUTS:
        assert registry.get_sample_value("leadpulse_events_consumed_total", {"topic": spec.name}) == 0
        assert registry.get_sample_value("leadpulse_events_ingested_total", {"topic": spec.name}) == 0
    for sla in SLA_NAMES:
        for level in SLA_LEVELS:
            assert registry.get_sample_value("leadpulse_sla_events_total", {"sla": sla, "level": level}) == 0


def test_every_metric_name_follows_the_unit_and_total_conventions() -> None:
    families = exposition(Metrics(CollectorRegistry()).registry)
    assert len(families) >= 23
    bad = []
    for name, kind in families:
        if not re.fullmatch(r"leadpulse_[a-z0-9_]+", name):
            bad.append(f"{name}: not snake_case under leadpulse_")
        elif kind == "counter" and name.endswith("_total"):
            bad.append(f"{name}: parser should strip _total from counter families")
        elif kind == "histogram" and not name.endswith(UNIT_SUFFIXES):
            bad.append(f"{name}: histogram without a base unit suffix")
        elif kind == "gauge" and not (
            name.endswith(UNIT_SUFFIXES) or name.endswith("_info") or name in UNITLESS_GAUGES
        ):
            bad.append(f"{name}: gauge without a unit (add one, or list it in UNITLESS_GAUGES with a reason)")
        elif "_ms" in name or "milli" in name:
            bad.append(f"{name}: use base units (seconds)")
        elif kind not in {"counter", "gauge", "histogram"}:
            bad.append(f"{name}: unexpected type {kind}")
    assert bad == []


def test_counter_samples_are_exposed_with_the_total_suffix_and_no_created_series() -> None:
    text = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    counter_samples = re.findall(r"^(leadpulse_\w+?)(?:\{| )", text, flags=re.MULTILINE)
    families = dict(exposition(Metrics(CollectorRegistry()).registry))
    for sample in counter_samples:
        base = sample.removesuffix("_total")
        if families.get(base) == "counter":
            assert sample.endswith("_total"), sample
    assert "_created" not in text


def test_no_label_could_carry_personal_data_or_secrets() -> None:
    text = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    label_names = {
        label for family in text_string_to_metric_families(text) for s in family.samples for label in s.labels
    }
    # Labelled families without samples yet: read their declared label names from the objects.
    m = Metrics(CollectorRegistry())
    for attribute in vars(m).values():
        label_names.update(getattr(attribute, "_labelnames", ()))
    assert label_names & FORBIDDEN_LABELS == set()


def test_process_metrics_are_opt_in() -> None:
    plain = CollectorRegistry()
    Metrics(plain)
    assert plain.get_sample_value("process_cpu_seconds_total") is None
    with_process = CollectorRegistry()
    Metrics(with_process, process_metrics=True)
    assert with_process.get_sample_value("process_cpu_seconds_total") is not None


def test_observe_many_exposes_exactly_what_observe_does() -> None:
    """observe_many reads prometheus_client internals: a client upgrade that changes them must fail here."""
    values = [0.0, 0.0, 0.004, 0.025, 0.0625, 1.0, 2.5, 3.0, 7.25, 60.0, 1e6]  # bounds included, sums exact
    one_by_one, bulk = CollectorRegistry(), CollectorRegistry()
    by_observe = Metrics(one_by_one)
    for value in values:
        by_observe.event_to_score_seconds.observe(value)
    observe_many(Metrics(bulk).event_to_score_seconds, values)
    assert generate_latest(bulk) == generate_latest(one_by_one)
    assert bulk.get_sample_value("leadpulse_event_to_score_seconds_count") == len(values)


def test_lag_series_of_partitions_given_away_are_removed() -> None:
    """After a scale-out the old owner kept exporting its last lag for the partitions it gave away, so
    ``sum by (group, topic)`` overstated the lag (ops audit)."""
    from streams.metrics import LagGauge

    metrics = Metrics(CollectorRegistry(), component="worker")
    lag = LagGauge(metrics.consumer_lag, "leadpulse-worker")

    def shown() -> dict[str, float]:
        return {
            s.labels["partition"]: s.value
            for family in metrics.registry.collect()
            if family.name == "leadpulse_consumer_lag"
            for s in family.samples
        }

    lag.report({("events.web_visits", p): 10 + p for p in range(4)})
    assert shown() == {"0": 10, "1": 11, "2": 12, "3": 13}
    lag.report({("events.web_visits", 2): 0, ("events.web_visits", 3): 5})  # 0 and 1 moved away
    assert shown() == {"2": 0, "3": 5}
    lag.report({})
    assert shown() == {}


class _Consumer:
    """What consumer_lags reads of an aiokafka consumer: the assignment and fetch high watermarks."""

    def __init__(self, highwaters: dict[int, int | None]) -> None:
        self.highwaters = {TopicPartition("t", p): high for p, high in highwaters.items()}

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]


def test_consumer_lag_takes_the_broker_end_offset_of_a_paused_partition_when_it_is_ahead() -> None:
    consumer = _Consumer({0: 10, 1: 0, 2: None, 3: 7, 4: None})
    committed = {0: 4, 1: 0, 3: 7}
    # 3: an answer behind the fetch (Tansu's ListOffsets) does not lower it
    ends = {TopicPartition("t", p): end for p, end in {0: 25, 3: 5, 4: 3}.items()}
    lags = consumer_lags(consumer, lambda tp: committed.get(tp.partition, 0), lambda t: t, ends)
    # partition 2: never fetched, no end offset asked: no lag known, no series
    assert lags == {("t", 0): 21, ("t", 1): 0, ("t", 3): 0, ("t", 4): 3}
    assert consumer_lags(consumer, lambda tp: committed.get(tp.partition, 0), lambda t: t) == {
        ("t", 0): 6,
        ("t", 1): 0,
        ("t", 3): 0,
    }
