"""The processes ``leadpulse demo`` runs beside the pipeline's own: each service as the ``leadpulse``
subprocess a user would start, and a webhook receiver standing in for the sales team's endpoint.

Why subprocesses and not threads: the demo shows what a deployment runs, with each service's own logs,
ports and readiness, and an embedded chDB directory can only be owned by one process anyway.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sinks.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature
from streams.broker import free_port, port_open


class DemoError(RuntimeError):
    """A demo step failed; the message says which and where its log is."""


class DemoUsageError(DemoError):
    """The demo cannot start as asked (options, data directory): the user's to fix, exit 2."""


@dataclass
class WebhookReceiver:
    """The sales team's endpoint: verifies signatures and counts notifications once by idempotency key."""

    secret: str
    keys: set[str] = field(default_factory=set)
    bad_signatures: int = 0
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if verify_signature(receiver.secret, self.headers.get(SIGNATURE_HEADER), body):
                    receiver.keys.add(self.headers.get(IDEMPOTENCY_HEADER, ""))
                    self.send_response(200)
                else:
                    receiver.bad_signatures += 1
                    self.send_response(401)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/sales"

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()


@dataclass
class Service:
    name: str
    args: list[str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str]) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leadpulse.cli", *self.args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def wait_ready(self, timeout: float = 90.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DemoError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise DemoError(f"{self.name} not ready after {timeout:.0f}s; see {self.log}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def port_or_free(wanted: int) -> int:
    """The configured port, unless something listens there already (a user's own sink or collector)."""
    return wanted if wanted and not port_open("127.0.0.1", wanted) else free_port()
