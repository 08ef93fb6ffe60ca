"""``leadpulse rescore`` from topics with no broker to read them: refused with a hint, no broker started."""

from __future__ import annotations

import socket

import pytest
import typer
from typer.testing import CliRunner

from agents.rules import DEFAULT_RULES_PATH
from leadpulse.commands import rescore_cmds
from streams.broker import no_embedded_broker_running
from streams.settings import load_settings
from tests.unit.test_rescore import rescore_app

pytestmark = pytest.mark.unit


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    return rescore_app(monkeypatch)


def test_topics_without_a_running_broker_are_refused_naming_the_address(cli: typer.Typer) -> None:
    """An embedded broker started for the read would have empty topics: the report would say nothing."""
    settings = rescore_cmds.cli_settings()
    result = CliRunner().invoke(cli, ["rescore", "--rules", str(DEFAULT_RULES_PATH), "--dry-run", "inputs"])
    assert result.exit_code == 2
    assert f"history: reading 'inputs' needs a running broker; none at {settings.bootstrap}" in result.output


def test_no_embedded_broker_running_only_when_nothing_listens_and_no_cluster_is_set() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        assert no_embedded_broker_running(load_settings(kafka_bootstrap=None, broker_port=port))
        listening.listen()
        assert not no_embedded_broker_running(load_settings(kafka_bootstrap=None, broker_port=port))
    # a configured cluster is never started here, reachable or not (its clients say what is wrong)
    assert not no_embedded_broker_running(load_settings(kafka_bootstrap="127.0.0.1:1", broker_port=port))
