"""A bad ``--format`` is refused before any query runs, with the flag and the choices named."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadpulse.cli import app

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("args", [["sql", "SELECT 1"], ["report", "funnel"], ["report", "content"]])
def test_bad_format_is_a_usage_error_naming_the_flag(args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--format", "yaml"])
    assert result.exit_code == 2
    assert "error: --format must be one of table, csv, json, got 'yaml'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_broker_that_refuses_the_credentials_is_not_reported_as_unreachable() -> None:
    """An unsupported SASL mechanism or a wrong password used to print "cannot reach the Kafka broker ...
    is it running?", sending the operator to check a broker that was up."""
    from aiokafka.errors import KafkaConnectionError
    from kafka.errors import SaslAuthenticationFailedError, UnsupportedSaslMechanismError

    from leadpulse.cli import _broker_problem

    for exc in (UnsupportedSaslMechanismError("PLAIN"), SaslAuthenticationFailedError("bad password")):
        message = _broker_problem(exc)
        assert "refused this client" in message and "LEADPULSE_KAFKA_SASL_MECHANISM" in message
        assert "is it running" not in message
    refused = _broker_problem(KafkaConnectionError("connection refused"))
    assert "is it running?" in refused
    assert "(KafkaConnectionError: connection refused)" in refused, refused  # the class named twice before
    refused_login = _broker_problem(SaslAuthenticationFailedError("bad password"))
    assert "client ([Error 58] SaslAuthenticationFailedError: bad password)" in refused_login, refused_login
    assert "(ValueError: odd)" in _broker_problem(ValueError("odd"))


def test_dlq_show_cuts_a_large_original_to_its_first_bytes_unless_full() -> None:
    """A 64 KiB dead record printed 128k hex characters (cosmetic finding, stop 16)."""
    from leadpulse.commands.edge_cmds import SHOWN_BYTES, _show_bytes

    big = bytes(range(256)) * 40
    short = _show_bytes(big)
    assert short.startswith(big[:SHOWN_BYTES].hex() + "  (10240 bytes;… first 256 shown, --full for all;")
    assert big[: SHOWN_BYTES + 1].hex() not in short
    assert _show_bytes(big, full=True).startswith(big.hex() + "  (10240 bytes; as text:")
    assert _show_bytes(b"\x02x") == "0278  (2 bytes; as text: '\\x02x')"


def test_dlq_show_cuts_a_long_decoded_record_unless_full() -> None:
    """The value line was cut, but the decoded line printed the whole record: a 70 KB url filled the terminal
    (ingestion audit)."""
    from leadpulse.commands.edge_cmds import SHOWN_CHARS, describe
    from schemas.registry import default_registry
    from streams.dlq import DeadLetter, dead_letter
    from streams.samples import sample_events

    event = {**next(iter(sample_events("web_visit", 1, seed=3))), "url": "https://x.example/" + "a" * 70_000}
    value = default_registry().encode("web_visit", event)
    letter = DeadLetter(0, 7, dead_letter("events.web_visits", 1, 2, b"k", value, "process", "boom"))
    decoded = next(line for line in describe(letter).splitlines() if line.startswith("  decoded"))
    assert len(decoded) < SHOWN_CHARS + 200 and "first 2000 shown, --full for all" in decoded
    assert decoded.startswith("  decoded     web_visit: {")
    full = next(line for line in describe(letter, full=True).splitlines() if line.startswith("  decoded"))
    assert event["url"] in full


@pytest.mark.parametrize("option", ["--out", "--manifest", "--content-out"])
def test_generate_to_a_missing_directory_names_the_option(tmp_path: Path, option: str) -> None:
    target = tmp_path / "no-such-dir" / "file.csv"
    out = [] if option == "--out" else ["--out", str(tmp_path / "events.jsonl")]
    result = CliRunner().invoke(app, ["generate", "--leads", "1", *out, option, str(target)])
    assert result.exit_code == 2, result.output
    assert f"leadpulse: error: {option} {target}: No such file or directory" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_rescore_with_a_bad_setting_names_the_variable(tmp_path: Path) -> None:
    """rescore read the settings itself: a typo in a LEADPULSE_* variable ended in a traceback."""
    history = tmp_path / "history.jsonl"
    history.write_text("")
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\n")
    args = ["rescore", str(history), "--rules", str(rules), "--dry-run"]
    result = CliRunner().invoke(app, args, env={"LEADPULSE_WEB_PORT": "80x"})
    assert result.exit_code == 2, result.output
    assert "error: invalid settings: LEADPULSE_WEB_PORT" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
