"""Run leadpulse commands as real subprocesses (the way users and deployments run them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from streams.broker import free_port
from streams.settings import environ_without_settings

LEADPULSE = [sys.executable, "-m", "leadpulse.cli"]


def leadpulse_env(**settings: object) -> dict[str, str]:
    """The current environment plus LEADPULSE_* variables from keyword arguments (and LEADPULSE_NATIVE, the
    compiled modules' switch, which is not a setting)."""
    env = environ_without_settings()
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


def collector_process(
    tmp_path: Path, bootstrap: str, prefix: str, port: int, **settings: object
) -> CliProcess:
    """``leadpulse collector`` on ``port`` with the web write key ``k``, its data dir and log under
    ``tmp_path``; ``settings`` are more ``LEADPULSE_*`` values (grace, publish timeout)."""
    env = leadpulse_env(
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        data_dir=tmp_path / "collector",
        write_keys='{"web": "k"}',
        **settings,
    )
    return CliProcess(["collector", "--port", str(port)], env, tmp_path / "collector.log")


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


#: The settings naming each long-running command's ops port.
OPS_PORT_SETTING = {"worker": "web_port", "sink": "sink_port", "notifier": "notifier_port"}


def pipeline_processes(
    tmp_path: Path, bootstrap: str, prefix: str, ports: dict[str, int]
) -> dict[str, CliProcess]:
    """The long-running commands named in ``ports`` (worker, sink, collector, notifier) against one broker,
    each with its own data directory, log and ops port; the notifier posts to a closed port."""
    common: dict[str, object] = {"kafka_bootstrap": bootstrap, "topic_prefix": prefix}
    extra: dict[str, dict[str, object]] = {
        "collector": {"write_keys": '{"web": "k"}'},
        "notifier": {
            "webhook_urls": json.dumps([f"http://127.0.0.1:{free_port()}/hook"]),
            "webhook_secret": "s3cret-for-test",
        },
    }
    procs = {}
    for name, port in ports.items():
        args = ["collector", "--port", str(port)] if name == "collector" else [name]
        settings = {**common, "data_dir": tmp_path / name, **extra.get(name, {})}
        if name in OPS_PORT_SETTING:
            settings[OPS_PORT_SETTING[name]] = port
        procs[name] = CliProcess(args, leadpulse_env(**settings), tmp_path / f"{name}.log")
    return procs
