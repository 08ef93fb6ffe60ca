"""The Faust app factory: one place that turns Settings into a configured ``faust.App``.

Choices (DESIGN §11): ``at_least_once`` (Tansu cannot run aiokafka's transactional producer, so outputs are
made idempotent by deterministic ids instead), short session timeouts on Tansu (group joins
take about half the session timeout), in-memory table store recovered from the changelog, and the Tansu
end-offset workaround applied only when talking to Tansu (see ``streams.broker.is_tansu``).
"""

from __future__ import annotations

from typing import Any

import faust

from streams.broker import aiokafka_client_config, is_tansu, kafka_client_config
from streams.codec import register_codecs
from streams.settings import Settings
from streams.topics import INPUT_PARTITIONS


def create_app(settings: Settings, app_id: str = "leadpulse-worker") -> faust.App:
    register_codecs()
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    tansu = is_tansu(settings)
    if tansu:
        from streams.tansu_compat import patch_faust_end_offsets

        # the corrected end offsets come from a second consumer, which needs the same SASL/TLS settings
        patch_faust_end_offsets(settings.bootstrap, security=aiokafka_client_config(settings))
    extra: dict[str, Any] = {}
    client = kafka_client_config(settings)
    if client.get("sasl_mechanism"):
        from faust.auth import SASLCredentials

        extra["broker_credentials"] = SASLCredentials(
            username=str(client["sasl_plain_username"]),
            password=str(client.get("sasl_plain_password", "")),
            mechanism=str(client["sasl_mechanism"]),
        )
    return faust.App(
        settings.topic_prefix + app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=INPUT_PARTITIONS,
        topic_replication_factor=1,
        topic_allow_declare=True,
        table_standby_replicas=0,
        broker_session_timeout=6.0 if tansu else 30.0,
        broker_heartbeat_interval=1.0 if tansu else 3.0,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        producer_linger_ms=5,
        producer_max_batch_size=256 * 1024,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        datadir=str(settings.data_dir / "faust"),
        **extra,
    )
