"""A port another process holds: the worker, the sink and the collector stop with one line naming the port and
the setting, exit 1, and leave no "Unclosed" client behind (they printed a 60-line traceback; the collector
printed aiohttp's bind error, naming no setting)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.processes import LEADPULSE, leadpulse_env

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("command", "port_setting", "message"),
    [
        ("worker", "web_port", "cannot serve ops endpoints on 127.0.0.1:{port}"),
        ("sink", "sink_port", "cannot serve the sink API on 127.0.0.1:{port} (set LEADPULSE_SINK_PORT)"),
        (
            "collector",
            "collector_port",
            "collector cannot listen on 127.0.0.1:{port} (LEADPULSE_COLLECTOR_PORT)",
        ),
    ],
)
def test_a_busy_port_is_one_line_naming_it(
    command: str,
    port_setting: str,
    message: str,
    broker: EmbeddedBroker,
    broker_settings: Settings,
    tmp_path: Path,
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = leadpulse_env(
            kafka_bootstrap=broker.bootstrap,
            topic_prefix=broker_settings.topic_prefix,
            data_dir=tmp_path / "d",
            write_keys='{"web": "wk_test"}',  # the collector refuses to start without one
            **{port_setting: port},
        )
        done = subprocess.run(
            [*LEADPULSE, command], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert f"leadpulse: error: {message.format(port=port)}" in out
    for bad in ("Traceback", "Unclosed"):
        assert bad not in out, out
