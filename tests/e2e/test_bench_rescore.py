"""``leadpulse bench rescore`` runs as a user types it and prints its three ratios against the baseline it
measured in the same run, and that both dry runs reported the same. Nothing about the numbers is asserted
beyond their presence and sign: they are measurements, not targets (bench/rescore_bench.py)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


def test_bench_rescore_prints_ratios_and_the_same_report(tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [*LEADPULSE, "bench", "rescore", "--events", "1000"],
        env=leadpulse_env(data_dir=tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for label in ("history held, bytes/event", "dry run peak, bytes/event", "dry run time, us/event"):
        row = next(line for line in done.stdout.splitlines() if line.startswith(label))
        *_, new, old, ratio = row.split()
        assert float(new.replace(",", "")) > 0 and float(old.replace(",", "")) > 0, row
        assert re.fullmatch(r"\d+\.\d\dx", ratio), row
    assert "1,000 events replayed" in done.stdout
    assert "same report: yes" in done.stdout
