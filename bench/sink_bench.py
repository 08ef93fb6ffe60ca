"""Sink throughput, topic → ClickHouse, against a bare clickhouse-connect insert of the same rows.

Why both in one run: the machine (2 shared cores here) varies more than the code does; the ratio of the
end-to-end sink to the bare insert measured seconds apart is the number worth tracking (target >= 50%).

``run_sink_bench`` publishes ``events`` web visits to fresh topics, runs the sink loop in-process until
every row is stored, then inserts the very same rows (fresh event ids) with bare ``client.insert`` calls
in batches of the same size. ``leadpulse bench sink`` calls it.

Both sides run in this one process, so both get the same cyclic-GC thresholds, the ones ``leadpulse sink``
sets (``streams.gc_tuning``), as the worker bench gives its naive worker the real worker's. And before each
timed side the bench's own data (the 200k published records, the baseline's rows) is frozen out of the
collector's reach (``gc.freeze``): neither process it stands for holds it, and full collections walking it
slowed each side by a different, run-dependent amount.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from streams.settings import Settings, load_settings


def _events(count: int, run_id: str) -> list[dict[str, Any]]:
    from streams.samples import sample_events

    return [
        {**r, "event_id": f"{run_id}-{r['event_id']}"} for r in sample_events("web_visit", count, seed=99)
    ]


def run_sink_bench(
    settings: Settings | None = None,
    *,
    events: int = 200_000,
    batch_rows: int = 50_000,
    batch_seconds: float = 1.0,
    out: Callable[[str], None] = print,
) -> dict[str, float]:
    """Print and return sink rows/s, bare insert rows/s and their ratio.

    ClickHouse: ``settings.clickhouse_dsn`` when set, else a throw-away chDB directory (a user's embedded
    data directory may be owned by a running sink). Kafka: ``LEADPULSE_KAFKA_BOOTSTRAP`` or an embedded
    Tansu started for the run. Topics get a unique prefix, so runs never see each other's records.
    """
    from schemas.registry import default_registry
    from sinks.batch import INSERT_SETTINGS, BatchPolicy
    from sinks.clickhouse import get_client
    from sinks.migrate import migrate
    from sinks.rows import EVENTS, Origin, to_row
    from sinks.sink_loop import ClickHouseSinkLoop
    from streams.broker import create_topics, running_broker
    from streams.gc_tuning import tune_gc
    from streams.producer import Producer

    base = settings or load_settings()
    run_id = uuid.uuid4().hex[:8]
    with ExitStack() as stack:
        stack.callback(gc.set_threshold, *gc.get_threshold())
        stack.callback(gc.unfreeze)
        tune_gc()
        scratch = None
        if base.clickhouse_dsn is None:
            scratch = tempfile.mkdtemp(prefix="leadpulse-bench-")
            stack.callback(shutil.rmtree, scratch, True)
        bootstrap = stack.enter_context(running_broker(base))
        settings = base.model_copy(
            update={
                "kafka_bootstrap": bootstrap,
                "topic_prefix": f"{base.topic_prefix}bench{run_id}.",
                "clickhouse_dsn": base.clickhouse_dsn or f"chdb://{scratch}/clickhouse",
            }
        )
        create_topics(bootstrap, settings.topic_prefix)
        client = get_client(settings)
        stack.callback(client.close)
        migrate(client)

        records = _events(events, run_id)
        started = time.perf_counter()
        with Producer(settings, linger_ms=50) as producer:
            for record in records:
                producer.send("web_visit", record, validate=False)
        out(f"published {events:,} web_visit events in {time.perf_counter() - started:.1f}s")

        gc.collect()
        gc.freeze()
        topic = settings.topic("events.web_visits")
        loop = ClickHouseSinkLoop(settings, client, policy=BatchPolicy(batch_rows, batch_seconds))
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
        thread.start()
        while not loop.stats.assigned and thread.is_alive():
            time.sleep(0.01)
        t0 = time.perf_counter()
        while loop.stats.inserted.get("events", 0) < events and thread.is_alive():
            time.sleep(0.01)
        sink_seconds = time.perf_counter() - t0
        stop.set()
        thread.join(60)
        sink_rate = events / sink_seconds

        # Baseline: the same rows, fresh ids (so they are not deduplicated), bare inserts, same batch size.
        registry = default_registry()
        key = settings.email_hash_key.get_secret_value().encode()
        rows = []
        for offset, record in enumerate(records):
            fresh = {**record, "event_id": f"base-{record['event_id']}"}
            _, decoded = registry.decode(registry.encode("web_visit", fresh))
            rows.append(to_row("web_visit", decoded, Origin(f"{topic}.baseline", 0, offset), key)[1])
        columns = list(EVENTS.insert_columns)
        gc.collect()
        gc.freeze()
        t0 = time.perf_counter()
        for start in range(0, len(rows), batch_rows):
            client.insert(
                EVENTS.qualified,
                rows[start : start + batch_rows],
                column_names=columns,
                settings={**INSERT_SETTINGS, "insert_deduplication_token": f"base-{run_id}-{start}"},
            )
        bare_rate = len(rows) / (time.perf_counter() - t0)

    ratio = sink_rate / bare_rate
    out(
        f"sink end to end (topic -> ClickHouse): {sink_rate:,.0f} rows/s  ({events:,} rows, "
        f"batches of {batch_rows:,} rows / {batch_seconds}s)"
    )
    out(f"bare clickhouse-connect insert:        {bare_rate:,.0f} rows/s  (same rows, same batch size)")
    out(f"ratio: {ratio:.0%} (target >= 50%)")
    if events < batch_rows:
        out(
            f"note: fewer events than one batch ({batch_rows:,} rows): the sink's {batch_seconds}s wait for "
            "its batch to fall due dominates a run this short; the target is judged on 200,000 events"
        )
    return {"sink_rows_per_second": sink_rate, "bare_rows_per_second": bare_rate, "ratio": ratio}


if __name__ == "__main__":
    import sys

    run_sink_bench(
        events=int(sys.argv[1]) if len(sys.argv) > 1 else 200_000,
        batch_rows=int(sys.argv[2]) if len(sys.argv) > 2 else 50_000,
    )
