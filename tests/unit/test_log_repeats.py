"""The repeat filter keeps a dependency outage from flooding the logs, and says how much it held back."""

from __future__ import annotations

import logging

import pytest

from streams.logs import RepeatFilter

pytestmark = pytest.mark.unit


def record(msg: str, *args: object, name: str = "aiokafka", level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_identical_messages_within_the_window_are_held_back_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("streams.logs.time.monotonic", lambda: now[0])
    repeats = RepeatFilter(window_s=30)
    assert repeats.filter(record("Unable connect to node with id %s", 111))
    for _ in range(50):
        now[0] += 0.1
        assert not repeats.filter(record("Unable connect to node with id %s", 111))
    assert repeats.filter(record("Unable connect to node with id %s", 112))  # another text: shown
    assert repeats.filter(record("Unable connect to node with id %s", 111, level=logging.WARNING))
    now[0] += 30
    again = record("Unable connect to node with id %s", 111)
    assert repeats.filter(again)
    assert again.getMessage() == "Unable connect to node with id 111 (repeated 50 more time(s) in 30 s)"
    now[0] += 31
    quiet = record("Unable connect to node with id %s", 111)
    assert repeats.filter(quiet) and quiet.getMessage() == "Unable connect to node with id 111"
