"""The pure half of ``streams.dlq``: the dead-letter record every component writes, and its writer header."""

from __future__ import annotations

import pytest

from schemas.registry import default_registry
from streams.dlq import (
    MAX_VALUE_BYTES,
    STAGES,
    WRITER_HEADER,
    check_filters,
    dead_letter,
    replayable,
    writer_headers,
    writer_of,
)
from streams.samples import sample_events

pytestmark = pytest.mark.unit


def test_a_decodable_original_gives_its_event_id_and_an_exception_its_type() -> None:
    registry = default_registry()
    event = next(iter(sample_events("download", 1, seed=3)))
    value = registry.encode("download", event)
    letter = dead_letter(
        "events.downloads", 2, 41, "L-1", value, "process", KeyError("content_id"), failed_at=7
    )
    assert letter["event_id"] == event["event_id"]
    assert (letter["error_type"], letter["error"]) == ("KeyError", "'content_id'")
    assert (letter["key"], letter["value"], letter["failed_at"]) == (b"L-1", value, 7)
    registry.encode("dead_letter", letter)  # a valid record of the schema


def test_a_text_error_has_type_error_unless_the_writer_names_one() -> None:
    plain = dead_letter("leads.hot", 0, 1, None, b"\x00", "webhook", "HTTP 410", failed_at=1)
    named = dead_letter(
        "leads.hot",
        0,
        1,
        None,
        b"\x00",
        "webhook",
        "HTTP 410",
        failed_at=1,
        error_type="WebhookDeliveryFailed",
    )
    assert plain["error_type"] == "Error" and plain["event_id"] is None  # undecodable bytes: no event id
    assert named["error_type"] == "WebhookDeliveryFailed" and named["error"] == "HTTP 410"


def test_an_oversized_original_is_truncated_and_the_message_says_so() -> None:
    value = b"x" * (MAX_VALUE_BYTES + 10)
    letter = dead_letter("events.web_visits", 0, 5, b"k", value, "decode", "too big", failed_at=1)
    assert len(letter["value"]) == MAX_VALUE_BYTES
    assert f"[value truncated to {MAX_VALUE_BYTES} of {MAX_VALUE_BYTES + 10} bytes]" in letter["error"]


def test_a_truncated_value_is_not_replayed_and_a_whole_one_is() -> None:
    """``dlq replay`` re-published the cut bytes (audit): a different, corrupt record on the source topic."""
    cut = dead_letter(
        "events.downloads", 0, 5, b"k", b"x" * (MAX_VALUE_BYTES + 1), "decode", "bad", failed_at=1
    )
    reason = replayable(cut, "")
    assert reason is not None and f"truncated in the dead letter ({MAX_VALUE_BYTES} of" in reason
    whole = dead_letter("events.downloads", 0, 6, b"k", b"x" * MAX_VALUE_BYTES, "decode", "bad", failed_at=1)
    assert replayable(whole, "") is None
    # a long error message is cut at 3000 characters before the marker, so the marker always survives
    long_error = dead_letter(
        "events.downloads", 0, 7, b"k", b"y" * (MAX_VALUE_BYTES + 1), "decode", "e" * 9000
    )
    assert replayable(long_error, "") is not None


def test_an_unknown_stage_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="stage: 'parse' is not one of decode"):
        dead_letter("events.web_visits", 0, 5, None, None, "parse", "x")


def test_the_writer_header_round_trips_and_is_absent_on_older_letters() -> None:
    for writer in ("worker", "sink", "notifier", "cli"):
        assert writer_of([("other", b"v"), *writer_headers(writer)]) == writer
    assert writer_of([]) is None
    assert writer_of([(WRITER_HEADER, None)]) is None
    with pytest.raises(ValueError, match="writer: 'collector' is not one of worker"):
        writer_headers("collector")


@pytest.mark.parametrize(
    ("topic", "stage", "message"),
    [
        ("events.nope", None, "--topic: unknown topic 'events.nope'; topics: accounts.scores, dlq"),
        (None, "bogus", "--stage: expected one of decode, validate, process, sink, webhook, collector"),
    ],
)
def test_a_list_or_replay_filter_that_can_match_nothing_is_refused_naming_the_option(
    topic: str | None, stage: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.")):
        check_filters(topic, stage, prefix="acme.")


@pytest.mark.parametrize("topic", ["events.web_visits", "acme.events.web_visits", None])
@pytest.mark.parametrize("stage", [*STAGES, None])
def test_known_topics_with_or_without_the_prefix_and_every_stage_pass(
    topic: str | None, stage: str | None
) -> None:
    check_filters(topic, stage, prefix="acme.")
