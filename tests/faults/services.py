"""The real ``leadpulse worker`` / ``leadpulse sink`` processes of one fault test (``services`` fixture).

Why one starter: a fault test starts, kills and restarts processes; ``Services.start`` starts each with the
test's broker, topic prefix and data dir and waits until it answers ``/ready``; the fixture stops whatever
is still running at teardown, so a failed assertion never leaves a process behind on the shared machine.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leadpulse.live_view import scrape, total
from sinks.query_service import Runner, http_runner
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.processes import LEADPULSE, CliProcess, http_ok, leadpulse_env, wait_until

PORT_SETTING = {"worker": "web_port", "sink": "sink_port"}


@dataclass
class Service:
    """A running ``leadpulse`` process and the port of its ops (and, for the sink, query) endpoints."""

    kind: str
    proc: CliProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples on ``/metrics`` (0 while the process does not answer)."""
        return total(scrape(f"{self.url}/metrics"), name, **labels)

    def query(self) -> Runner:
        """Read-only SQL against the engine this sink owns (embedded ClickHouse)."""
        return http_runner(self.url)

    def alive(self) -> bool:
        return self.proc.proc.poll() is None


class Services:
    """Starts ``leadpulse worker|sink`` for one test; ``stop_all`` ends the ones still running."""

    def __init__(self, broker: EmbeddedBroker, settings: Settings, tmp_path: Path) -> None:
        self.broker = broker
        self.settings = settings
        self.tmp_path = tmp_path
        self.started: list[Service] = []

    def env(self, kind: str, port: int, **settings: Any) -> dict[str, str]:
        base: dict[str, Any] = {
            "kafka_bootstrap": self.broker.bootstrap,
            "topic_prefix": self.settings.topic_prefix,
            "data_dir": self.tmp_path / "data",
            PORT_SETTING[kind]: port,
        }
        return leadpulse_env(**{**base, **settings})

    def start(
        self, kind: str, *args: str, ready: bool = True, log: str | None = None, **settings: Any
    ) -> Service:
        """Start ``leadpulse <kind> <args>`` with LEADPULSE_* ``settings`` on top of the test's own; wait
        for ``/ready`` unless ``ready=False`` (e.g. a sink that cannot reach ClickHouse never is)."""
        port = free_port()
        name = log or f"{kind}-{sum(s.kind == kind for s in self.started) + 1}.log"
        proc = CliProcess([kind, *args], self.env(kind, port, **settings), self.tmp_path / name)
        service = Service(kind, proc, port)
        self.started.append(service)
        if ready:
            self.wait_ready(service)
        return service

    def wait_ready(self, *services: Service) -> None:
        """Wait until each answers ``/ready`` (processes started with ``ready=False`` start up together)."""
        for service in services:
            url = f"{service.url}/ready"
            wait_until(lambda url=url: http_ok(url), 90, f"{service.kind} ready", service.proc)  # type: ignore[misc]

    def sql(self, query: str) -> list[dict[str, Any]]:
        """``leadpulse sql --format json`` on the test's embedded engine, run while no sink owns it (the CLI
        then opens the data directory itself): how a crashed sink left the tables."""
        env = self.env("sink", free_port())
        done = subprocess.run(
            [*LEADPULSE, "sql", query, "--format", "json"], env=env, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        sections: dict[str, list[dict[str, Any]]] = json.loads(done.stdout)  # one section: the result
        return [row for rows in sections.values() for row in rows]

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for service in self.started:
            codes[service.proc.log.name] = service.proc.stop()
        return codes
