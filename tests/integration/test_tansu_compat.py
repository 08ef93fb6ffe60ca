"""The Tansu ListOffsets bug and its workaround (DESIGN §11), shown on the real embedded broker."""

from __future__ import annotations

import asyncio

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.broker import EmbeddedBroker, is_tansu
from streams.settings import Settings
from streams.tansu_compat import true_end_offsets

pytestmark = pytest.mark.integration


def test_end_offsets_are_corrected_from_fetch_high_watermarks(broker_settings: Settings) -> None:
    topic = broker_settings.topic("dlq")
    producer = KafkaProducer(bootstrap_servers=broker_settings.bootstrap, linger_ms=50)
    for batch in (10, 3):  # two multi-record batches on partition 0
        for i in range(batch):
            producer.send(topic, key=b"k", value=b"v%d" % i, partition=0)
        producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker_settings.bootstrap)
    tps = [TopicPartition(topic, p) for p in range(4)]
    reported = consumer.end_offsets(tps)
    consumer.close()
    # Tansu 0.6 answers base offset of the last batch + 1 (11), not the log end (13). If this starts failing,
    # Tansu fixed the bug and streams/tansu_compat.py can go.
    assert reported[tps[0]] == 11
    corrected = asyncio.run(true_end_offsets(broker_settings.bootstrap, reported))
    assert corrected[tps[0]] == 13
    assert [corrected[tp] for tp in tps[1:]] == [0, 0, 0]


def test_a_configured_tansu_is_recognised_by_its_cluster_id(
    broker: EmbeddedBroker, broker_settings: Settings, make_settings
) -> None:  # type: ignore[no-untyped-def]
    assert is_tansu(broker_settings)  # LEADPULSE_KAFKA_BOOTSTRAP points at a Tansu: still worked around
    assert not is_tansu(make_settings(kafka_bootstrap=broker.bootstrap, tansu_workaround=False))
