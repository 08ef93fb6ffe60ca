"""``leadpulse bench`` stopped with SIGTERM (a ``timeout``, a cancelled CI job) leaves nothing behind: its
broker and worker processes stop and its temporary directory is removed. Python's default SIGTERM ended the
bench at once and left a worker running, orphaned, plus ``/tmp/leadpulse-bench-*`` (CLI audit)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (by /proc parent links)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_benchmarks_processes_and_removes_its_directory(tmp_path: Path) -> None:
    env = {**leadpulse_env(data_dir=tmp_path / "data"), "TMPDIR": str(tmp_path)}
    bench = subprocess.Popen(
        [*LEADPULSE, "bench", "worker", "--events", "20000", "--naive-events", "1000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        started: set[int] = set()
        while len(started) < 2:  # the broker and the real worker
            assert time.monotonic() < deadline and bench.poll() is None, "the bench started no processes"
            started |= _children(bench.pid)
            time.sleep(0.2)
        assert list(tmp_path.glob("leadpulse-bench-*")), "the bench's directory is not under TMPDIR"
        bench.send_signal(signal.SIGTERM)
        code = bench.wait(60)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait(10)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in started if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running after SIGTERM: {left}"
    assert code == 128 + signal.SIGTERM
    assert not list(tmp_path.glob("leadpulse-bench-*"))
