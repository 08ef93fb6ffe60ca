"""Soak benchmark (issue 8): worker memory over >= 1M events from a fixed population of leads.

Why a fixed population: memory that grows with the number of distinct leads is the state itself (one entry
per lead, by design); what must stay flat once every lead has been seen is everything per lead on top of it
(seen event ids, caps, signals, anonymous buffers: all bounded, docs/scoring.md). Event time spans 90 days
so the 30-day windows really slide, and hot leads (Zipf) pass the 2,000 seen-id bound many times over.

The workload is produced in chunks while the worker runs; after each chunk is consumed the worker's RSS is
read from /proc. The ratio printed is end RSS / RSS after warm-up (the first 40% of events: the 30-day
windows fill during the first third of the run).

Run: ``leadpulse bench soak`` or ``python -m bench.soak --events 1000000``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.worker_bench import REAL
from bench.worker_harness import WorkerProcess, input_topics, produce, wait_consumed
from bench.workload import Workload, encode
from schemas.registry import default_registry
from streams.broker import create_topics, start_private_broker
from streams.settings import load_settings

WARM_UP_SHARE = 0.4  # the 30-day windows fill during the first third of the 90 days of event time


def rss_mib(pid: int) -> float:
    """Resident set size of a process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def run_soak(
    events: int = 1_000_000,
    leads: int = 10_000,
    chunk: int = 50_000,
    seed: int = 7,
    out: Any = print,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Produce ``events`` in chunks to one real worker; return RSS samples and the end/warm-up ratio."""
    registry = default_registry()
    with tempfile.TemporaryDirectory(prefix="leadpulse-soak-", dir=work_dir) as tmp:
        root = Path(tmp)
        broker = start_private_broker(root / "tansu.log")
        try:
            settings = load_settings(
                broker_host=broker.host, broker_port=broker.port, data_dir=root / "data", topic_prefix="soak."
            )
            create_topics(settings.bootstrap, settings.topic_prefix)
            workload = Workload(seed=seed, expected_events=events, span_days=90, population=leads)
            worker = WorkerProcess(REAL, settings, root / "worker.log")
            samples: list[dict[str, float]] = []
            produced, started = 0, time.monotonic()
            out(f"soak: {events:,} events, {leads:,} leads, chunks of {chunk:,}")
            out(f"{'events':>10} {'RSS MiB':>8} {'seconds':>8}")
            try:
                while produced < events:
                    batch = encode(workload.take(min(chunk, events - produced)), registry)
                    produce(settings, batch)
                    produced += len(batch)
                    wait_consumed(worker, input_topics(settings), produced, budget_s=900, poll_s=0.5)
                    rss = rss_mib(worker.proc.pid)
                    elapsed = time.monotonic() - started
                    samples.append({"events": produced, "rss_mib": rss, "seconds": elapsed})
                    out(f"{produced:>10,} {rss:>8.1f} {elapsed:>8.0f}")
            finally:
                worker.stop()
        finally:
            broker.stop()
    warm = next(s for s in samples if s["events"] >= WARM_UP_SHARE * events)
    ratio = samples[-1]["rss_mib"] / warm["rss_mib"]
    out(
        f"RSS after warm-up ({warm['events']:,.0f} events) {warm['rss_mib']:.1f} MiB, at the end "
        f"{samples[-1]['rss_mib']:.1f} MiB: end/warm-up = {ratio:.2f}"
    )
    return {"events": events, "leads": leads, "samples": samples, "end_over_warm_up": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=50_000)
    args = parser.parse_args()
    run_soak(args.events, args.leads, args.chunk)


if __name__ == "__main__":
    main()
