"""``produce_lines`` (``leadpulse produce``) when the broker goes away part-way through a file: what it says
was not sent. The broker is scripted here; the real one's outages are in tests/faults."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from leadpulse.cli import app
from streams.producer import DeliveryError, produce_lines
from streams.settings import load_settings

pytestmark = pytest.mark.unit


class BrokerGoneAtThirdSend:
    """Takes two records, never acknowledges them, and finds no broker for the third (``max_block_ms``)."""

    def __init__(self) -> None:
        self.settings = load_settings()
        self.pending: list[str] = []

    def send(self, topic: str, event: dict[str, Any]) -> None:
        if len(self.pending) == 2:
            raise DeliveryError(
                [(topic, event["lead_id"], "KafkaTimeoutError: no metadata")], [event["event_id"]]
            )
        self.pending.append(event["event_id"])

    def flush(self, timeout: float | None = None) -> None:
        if self.pending:
            ids, self.pending = self.pending, []
            raise DeliveryError([("events.web_visits", "L1", "KafkaTimeoutError: expired")] * 2, list(ids))


def _produce_with(
    produce_file: Callable[..., Any], path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Result:
    """``leadpulse produce <path>`` in-process, with ``produce_file`` standing in for the broker's side."""
    from leadpulse.commands import broker_cmds

    monkeypatch.setattr(broker_cmds, "produce_file", produce_file)
    return CliRunner().invoke(
        app,
        ["produce", str(path), "--topic", "events.web_visits"],
        env={"LEADPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "LEADPULSE_DATA_DIR": str(tmp_path / "d")},
    )


def test_a_broker_lost_mid_file_names_every_unsent_record_and_the_line_it_stopped_at() -> None:
    """The DeliveryError of the send that found no broker named only that record, and the file's context
    manager then replaced it by the flush's (the earlier, unacknowledged ones): neither said that produce had
    stopped there, so the lines after it (never read) were left out of every error, and so were the lines
    rejected as invalid before it."""
    visit = {"event_time": 1_764_403_200_000, "lead_id": "L1", "source": "s", "url": "u"}
    lines = [json.dumps({**visit, "event_id": f"e{n}"}) for n in (1, 2)]
    lines += [
        '{"event_id":',
        json.dumps({**visit, "event_id": "e4"}),
        json.dumps({**visit, "event_id": "e5"}),
    ]
    with pytest.raises(DeliveryError) as info:
        produce_lines(BrokerGoneAtThirdSend(), "events.web_visits", lines)  # type: ignore[arg-type]
    assert info.value.event_ids == ["e1", "e2", "e4"]
    assert "produce stopped at line 4: it and the lines after it were not sent" in str(info.value)
    assert info.value.report is not None and info.value.report.rejected == [
        (3, "not JSON: Expecting value at column 13")
    ]


def test_the_command_prints_the_lines_refused_before_the_broker_went_and_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    visit = {"event_time": 1_764_403_200_000, "lead_id": "L1", "source": "s", "url": "u"}
    path = tmp_path / "visits.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({**visit, "event_id": "e1"}),
                "[1]",
                *(json.dumps({**visit, "event_id": f"e{n}"}) for n in (3, 4)),
            ]
        )
    )

    def produce_file(settings: Any, file: Path, topic: str, bootstrap: str | None = None) -> Any:
        with file.open("rb") as handle:
            return produce_lines(BrokerGoneAtThirdSend(), topic, handle)  # type: ignore[arg-type]

    result = _produce_with(produce_file, path, tmp_path, monkeypatch)
    assert result.exit_code == 1, result.output
    assert "line 2: expected a JSON object, got list" in result.output
    assert "produce stopped at line 4" in " ".join(result.output.split())


def test_a_rejected_lines_reason_is_one_line_of_stderr_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reason quotes the line's own field names: a JSON key holding a line break ("a\\nb") split it over
    two lines of stderr (so `grep 'line 1:'` lost its end, and a key could print a fake 'line 7: …'), and
    rich turned a key such as ":smile:" into an emoji, so the error no longer named the field."""
    from schemas.errors import SchemaValidationError
    from schemas.registry import default_registry
    from streams.producer import ProduceReport

    visit = {"event_id": "e1", "event_time": 1_764_403_200_000, "lead_id": "L1", "source": "s", "url": "u"}
    with pytest.raises(SchemaValidationError) as info:
        default_registry().validate("web_visit", {**visit, ":smile:": 1, "a\nline 7: b": 2, "tab\there": 3})
    reason = str(info.value)
    path = tmp_path / "visits.jsonl"
    path.write_text("{}\n")

    def produce_file(settings: Any, file: Path, topic: str, bootstrap: str | None = None) -> Any:
        return ProduceReport(sent=0, rejected=[(1, reason)])

    result = _produce_with(produce_file, path, tmp_path, monkeypatch)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert [line for line in lines if line.startswith("line ")] == [
        "line 1: invalid web_visit: :smile:: unknown field (not in schema WebVisit); a\\nline 7: b: unknown "
        "field (not in schema WebVisit); tab\\there: unknown field (not in schema WebVisit)"
    ], result.output


def test_resolving_a_known_topic_does_not_list_the_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Producer.send`` resolves its topic for every record; the list of producible topics (sorted and
    joined, for the error messages) was built on every call, known topic or not: SDK and produce overhead
    per record for a message only an unknown topic shows."""
    from streams import producer as producer_module
    from streams.producer import resolve

    class NoListing(dict):  # type: ignore[type-arg]
        def values(self) -> Any:
            raise AssertionError("resolve listed the catalogue for a topic it knows")

    monkeypatch.setattr(producer_module, "BY_NAME", NoListing(producer_module.BY_NAME))
    assert resolve("web_visit").name == "events.web_visits"
    assert resolve("events.content_views").schema == "content_view"
    with pytest.raises(ValueError, match=r"unknown topic or schema 'nope'; topics: accounts\.scores, dlq, "):
        resolve("nope")
