"""Run leadpulse commands as real subprocesses (the way users and deployments run them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

LEADPULSE = [sys.executable, "-m", "leadpulse.cli"]


def leadpulse_env(**settings: object) -> dict[str, str]:
    """The current environment plus LEADPULSE_* variables from keyword arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPULSE_")}
    env.update({f"LEADPULSE_{k.upper()}": str(v) for k, v in settings.items() if v is not None})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class CliProcess:
    """A ``leadpulse`` subprocess with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [*LEADPULSE, *args], env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, proc: CliProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(
                f"{what}: process exited with {proc.proc.returncode}:\n{proc.output()[-3000:]}"
            )
        time.sleep(0.25)
    tail = proc.output()[-3000:] if proc else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
