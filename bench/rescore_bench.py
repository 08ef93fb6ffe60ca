"""Memory and time of ``leadpulse rescore --dry-run FILE``: the compact history against the old, decoded one.

Why: a dry run over months of topics (tens of millions of events) ran out of memory holding every event as
a decoded dict (~0.9-1.5 KB each) and replaying that list twice. ``agents/rescore_history.py`` holds each
event as Avro bytes and decodes it as it replays. The baseline, measured in the same run on the same file,
is the old approach, kept here and not in the product: every line validated into a list of dicts, a sorted
copy, one replay per rule set, the unmatched rules counted from the list.

Measured, each on its own: the peak traced memory (``tracemalloc``, what Python allocates; the replay's
lead states included, which both sides hold alike) of reading the file and of the whole dry run, and the
time per event of the whole dry run (a separate run without ``tracemalloc``, which slows allocation). The
workload is ``bench.workload`` (Zipf leads, identity stitching, duplicates, late events) spread over
``span_days``, written as the JSONL ``leadpulse generate --out`` writes. Both reports must be equal; no
timing is asserted.

    .venv/bin/python -m bench.rescore_bench --events 100000
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.rescore import (
    Change,
    Event,
    LeadOutcome,
    RescoreReport,
    _history_event,
    outcomes,
    read_history,
    replay,
    rescore,
    unmatched_rules,
)
from agents.rules import DEFAULT_RULES_PATH, Rules, load_rules
from bench.workload import Workload
from schemas.registry import default_registry


def decoded_history(path: Path) -> list[Event]:
    """The old ``read_history``: every line validated into a list of decoded records."""
    registry = default_registry()
    with path.open(encoding="utf-8") as lines:
        return [_history_event(registry, line) for line in lines if line.strip()]


def baseline_rescore(events: list[Event], old: Rules, new: Rules, now_ms: int) -> RescoreReport:
    """The old ``rescore``: a sorted copy of the decoded list, replayed once per rule set."""

    def event_time(item: Event) -> int:
        return int(item[1].get("event_time") or 0)

    history = sorted((e for e in events if event_time(e) <= now_ms), key=event_time)
    before = outcomes(replay(history, old, now_ms), old)
    after = outcomes(replay(history, new, now_ms), new)
    changes = []
    for lead_id in sorted(before.keys() | after.keys()):
        a = before.get(lead_id, LeadOutcome("awareness", 0.0, "cold"))
        b = after.get(lead_id, LeadOutcome("awareness", 0.0, "cold"))
        if a.stage != b.stage or a.band != b.band:
            changes.append(Change(lead_id, a.stage, b.stage, a.score, b.score, a.band, b.band))
    changes.sort(key=lambda c: (-abs(c.delta), c.lead_id))
    unmatched, typos = unmatched_rules(history, new)
    return RescoreReport(len(history), len(after), changes, unmatched, typos, len(events) - len(history))


def traced_peak(run: Callable[[], Any]) -> tuple[int, Any]:
    """Peak bytes ``tracemalloc`` saw while ``run`` ran, and what it returned."""
    gc.collect()
    tracemalloc.start()
    try:
        result = run()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def timed(run: Callable[[], Any]) -> float:
    gc.collect()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def write_history(path: Path, events: int, seed: int, span_days: float, now_ms: int) -> None:
    workload = Workload(seed=seed, expected_events=events, now_ms=now_ms, span_days=span_days)
    with path.open("w", encoding="utf-8") as out:
        for schema, record in itertools.islice(workload.events(), events):
            out.write(json.dumps({"type": schema, **record}) + "\n")


def run_rescore_bench(
    events: int = 100_000, seed: int = 1, span_days: float = 90.0, out: Callable[[str], None] = print
) -> None:
    now_ms = int(time.time() * 1000)
    old = load_rules(DEFAULT_RULES_PATH)
    with tempfile.TemporaryDirectory(prefix="leadpulse-rescore-bench-") as tmp:
        path = Path(tmp) / "history.jsonl"
        new_rules = Path(tmp) / "new.yaml"
        new_rules.write_text(
            DEFAULT_RULES_PATH.read_text().replace("mql_threshold: 100", "mql_threshold: 90")
        )
        new = load_rules(new_rules)
        write_history(path, events, seed, span_days, now_ms)
        size = path.stat().st_size / 1e6
        out(f"history: {events:,} generated events over {span_days:g} days, {size:.1f} MB of JSONL")
        read_history(path)  # schemas, codecs and rules compiled once, outside every measure

        def compact() -> RescoreReport:
            return rescore(read_history(path), old, new, now_ms)

        def straightforward() -> RescoreReport:
            return baseline_rescore(decoded_history(path), old, new, now_ms)

        held_new, history = traced_peak(lambda: read_history(path))
        held_old, _ = traced_peak(lambda: decoded_history(path))
        del history
        peak_new, report_new = traced_peak(compact)
        peak_old, report_old = traced_peak(straightforward)
        time_new, time_old = timed(compact), timed(straightforward)
    same = report_new == report_old
    per = 1 / events
    out(f"{'':34}{'compact (now)':>16}{'baseline':>16}{'ratio':>9}")
    rows = (
        ("history held, bytes/event", held_new * per, held_old * per, "{:,.0f}"),
        ("dry run peak, bytes/event", peak_new * per, peak_old * per, "{:,.0f}"),
        ("dry run time, us/event", time_new * per * 1e6, time_old * per * 1e6, "{:,.1f}"),
    )
    for label, new_value, old_value, number in rows:
        shown = number.format(new_value), number.format(old_value)
        out(f"{label:34}{shown[0]:>16}{shown[1]:>16}{new_value / old_value:>8.2f}x")
    out(
        f"baseline: decoded dicts in a list, sorted copy, two replays (same file, same run); "
        f"{report_new.events:,} events replayed, {report_new.leads:,} leads, "
        f"{len(report_new.changes):,} changes; same report: {'yes' if same else 'NO'}"
    )
    out("times are wall clock on this machine (shared cores vary); memory is tracemalloc's, not RSS")
    if not same:
        raise SystemExit("the compact dry run's report differs from the baseline's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--span-days", type=float, default=90.0)
    args = parser.parse_args()
    run_rescore_bench(args.events, args.seed, args.span_days)


if __name__ == "__main__":
    main()
