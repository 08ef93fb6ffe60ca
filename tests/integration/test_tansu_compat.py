"""The Tansu ListOffsets bug and its workaround (DESIGN §11), shown on the real embedded broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import SecretStr

from streams.broker import EmbeddedBroker, is_tansu
from streams.settings import Settings
from streams.tansu_compat import end_offsets, true_end_offsets

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


def test_the_correction_reads_with_the_configured_sasl_tls_settings(broker_settings: Settings) -> None:
    """The correction's own consumer speaks the configured security protocol, as every other client does:
    it spoke plaintext, so on a SASL/TLS broker taken for Tansu (``LEADPULSE_TANSU_WORKAROUND=true``, or
    ``is_tansu`` failing safe when it cannot read the cluster id) the worker's restore and every erasure log
    read failed. No SASL broker runs here, so this is shown the other way round: with SASL configured, the
    plaintext Tansu refuses the correction's consumer (it offers no SASL mechanism)."""
    topic = broker_settings.topic("dlq")
    producer = KafkaProducer(bootstrap_servers=broker_settings.bootstrap, linger_ms=50)
    for i in range(3):  # one multi-record batch: its end offset needs the correction
        producer.send(topic, key=b"k", value=b"v%d" % i, partition=0)
    producer.flush()
    producer.close()
    sasl = broker_settings.model_copy(
        update={
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "PLAIN",
            "kafka_sasl_username": "leadpulse",
            "kafka_sasl_password": SecretStr("not-a-real-password"),
        }
    )

    async def ends(settings: Settings) -> dict[object, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker_settings.bootstrap, group_id=None)
        await consumer.start()  # the caller's own consumer, plaintext: only the correction's is under test
        try:
            return await end_offsets(consumer, settings, [TopicPartition(topic, 0)], True)
        finally:
            await consumer.stop()

    assert asyncio.run(ends(broker_settings))[TopicPartition(topic, 0)] == 3
    with pytest.raises(KafkaConnectionError):
        asyncio.run(ends(sasl))
