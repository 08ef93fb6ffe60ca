"""Dead letters on the real broker: written by the middleware, then listed, shown and replayed (lib + CLI)."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from agents.rules import load_rules
from agents.worker import LeadWorker
from leadpulse.cli import app
from schemas.registry import default_registry
from streams.broker import EmbeddedBroker
from streams.dlq import dead_letter, find_dead_letters, list_dead_letters, publish, replay
from streams.metrics import Metrics
from streams.producer import Producer
from streams.reader import Decoded, Undecodable, read_topic
from streams.samples import sample_events
from streams.settings import Settings
from tests.integration.test_worker import demo_request
from tests.integration.worker_harness import running_worker, stages, wait_until

pytestmark = pytest.mark.integration

POISON = b"\xc3\x01" + struct.pack("<Q", 42) + b"\x02x"  # Single Object Encoding with an unknown fingerprint


@pytest.fixture
def settings(broker: EmbeddedBroker, fresh_prefix: str, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(kafka_bootstrap=broker.bootstrap, topic_prefix=fresh_prefix)


def cli(settings: Settings, *args: str) -> str:
    env = {
        "LEADPULSE_KAFKA_BOOTSTRAP": settings.bootstrap,
        "LEADPULSE_TOPIC_PREFIX": settings.topic_prefix,
        "COLUMNS": "250",
    }
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def seed(settings: Settings) -> tuple[bytes, Decoded]:
    """A poison record and a valid download on events.downloads; both dead-lettered as the worker would."""
    registry = default_registry()
    topic = settings.topic("events.downloads")
    good = registry.validate("download", next(sample_events("download", 1)))
    with Producer(settings) as producer:
        producer.send_encoded(topic, b"L-poison", POISON)
        producer.send("download", good)
    items = list(read_topic(settings, topic, idle_ms=800))
    [poison] = [i for i in items if isinstance(i, Undecodable)]
    [valid] = [i for i in items if isinstance(i, Decoded)]
    letters = [
        dead_letter(
            poison.topic, poison.partition, poison.offset, poison.key, poison.value, "decode", poison.error
        ),
        dead_letter(
            valid.topic,
            valid.partition,
            valid.offset,
            valid.key,
            registry.encode("download", valid.record),
            "process",
            ValueError("content_id: not in catalogue"),
        ),
    ]
    with Producer(settings) as producer:
        assert publish(producer, letters) == 2
    return registry.encode("download", valid.record), valid


def test_dead_letters_carry_source_position_error_and_original_bytes(settings: Settings) -> None:
    valid_bytes, valid = seed(settings)
    letters = list_dead_letters(settings)
    assert [(d.record["stage"], d.record["error_type"]) for d in letters] == [
        ("decode", "UnknownFingerprint"),
        ("process", "ValueError"),
    ]
    poison, processed = (d.record for d in letters)
    assert poison["source_topic"] == settings.topic("events.downloads")
    assert (poison["key"], poison["value"], poison["event_id"]) == (b"L-poison", POISON, None)
    assert "fingerprint 0x000000000000002a" in poison["error"]
    assert (processed["partition"], processed["offset"]) == (valid.partition, valid.offset)
    assert processed["value"] == valid_bytes
    assert processed["event_id"] == valid.record["event_id"]  # read from the original bytes
    assert processed["error"] == "content_id: not in catalogue"
    assert [d.writer for d in letters] == ["cli", "cli"]  # publish's default writer header
    assert [d.record["stage"] for d in list_dead_letters(settings, stage="process")] == ["process"]
    assert list_dead_letters(settings, topic="events.web_visits") == []


def test_cli_lists_shows_and_replays_dead_letters(settings: Settings) -> None:
    _, valid = seed(settings)
    listing = cli(settings, "dlq", "list")
    assert "events.downloads" in listing and "decode" in listing and "process" in listing
    assert "UnknownFingerprint" in listing
    rows = [json.loads(line) for line in cli(settings, "dlq", "list", "--json").splitlines()]
    assert [(row["stage"], row["written_by"]) for row in rows] == [("decode", "cli"), ("process", "cli")]
    poison = next(d for d in list_dead_letters(settings) if d.record["stage"] == "decode")
    shown = cli(settings, "dlq", "show", poison.address)
    assert POISON.hex() in shown
    assert "not decodable: UnknownFingerprint" in shown
    assert "written by  cli" in shown
    processed = next(d for d in list_dead_letters(settings) if d.record["stage"] == "process")
    assert valid.record["event_id"] in cli(settings, "dlq", "show", processed.address)  # decoded original

    dry = cli(settings, "dlq", "replay", "--stage", "process", "--dry-run")
    assert "would replay 1 record" in dry
    assert "replayed 1 record" in cli(settings, "dlq", "replay", "--stage", "process", "--since", "1h")
    source = list(read_topic(settings, settings.topic("events.downloads"), idle_ms=800))
    # the original bytes are back on their source topic (now twice: the first copy and the replay) and the
    # poison record, not selected, was not re-published
    values = [i.record for i in source if isinstance(i, Decoded)]
    assert values == [valid.record, valid.record]
    assert sum(isinstance(i, Undecodable) for i in source) == 1
    replayed = next(i for i in source if isinstance(i, Decoded) and i.offset != valid.offset)
    assert replayed.key == valid.key


def test_replay_skips_letters_without_a_catalogue_topic_or_bytes(settings: Settings) -> None:
    letter = dead_letter("webhook:json-0", -1, -1, None, None, "webhook", "HTTP 500")
    with Producer(settings) as producer:
        publish(producer, [letter])
    report = replay(settings)
    assert report.replayed == 0
    assert [reason for _, reason in report.skipped] == ["no original value bytes"]
    assert len(find_dead_letters(settings, "0")) + len(find_dead_letters(settings, "1")) >= 1
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        find_dead_letters(settings, "x:y")


def test_replay_sends_an_original_dead_lettered_by_two_consumers_back_once(settings: Settings) -> None:
    seed(settings)
    poison = next(d for d in list_dead_letters(settings) if d.record["stage"] == "decode").record
    with Producer(settings) as producer:  # the sink's dead letter of the same poison record
        publish(producer, [{**poison, "failed_at": poison["failed_at"] + 1}])
    report = replay(settings, stage="decode")
    assert report.replayed == 1
    assert [reason.split(" dead letter ")[0] for _, reason in report.skipped] == ["same original record as"]
    source = list(read_topic(settings, settings.topic("events.downloads"), idle_ms=800))
    assert sum(isinstance(i, Undecodable) for i in source) == 2  # the original and one replayed copy


def worker_dead_letters_one(
    settings: Settings, bad: tuple[bytes, bytes], good: tuple[bytes, bytes], reason: str
) -> dict[str, Any]:
    """Send a bad download, then a good demo request, to a real worker; wait until the good lead is mql
    and the bad record is counted invalid with ``reason``. Returns the one dead letter, checked to carry the
    bad record's topic, partition, offset, key and bytes."""
    topic = settings.topic("events.downloads")
    with Producer(settings) as producer:
        producer.send_encoded(topic, *bad)
        producer.send_encoded(topic, *good)
    [original] = [i for i in read_topic(settings, topic, idle_ms=800) if i.key == bad[0]]
    metrics = CollectorRegistry()
    worker = LeadWorker(settings, load_rules(None), Metrics(metrics), scan_interval_s=3600)
    good_lead, bad_lead = good[0].decode(), bad[0].decode()

    def invalid() -> float | None:
        labels = {"topic": "events.downloads", "reason": reason}
        return metrics.get_sample_value("leadpulse_events_invalid_total", labels)

    async def scenario() -> None:
        async with running_worker(worker) as running:
            await wait_until(lambda: stages(worker, good_lead) == ("mql",) and invalid() == 1, running)
            assert stages(worker, bad_lead) == (None,)

    asyncio.run(scenario())
    [letter] = [d.record for d in list_dead_letters(settings)]
    assert (letter["source_topic"], letter["partition"], letter["offset"]) == (
        topic,
        original.partition,
        original.offset,
    )
    assert (letter["key"], letter["value"]) == bad
    return letter


def test_the_worker_dead_letters_a_record_with_trailing_bytes_instead_of_scoring_it(
    settings: Settings,
) -> None:
    """A producer wrote a download with a schema other than the one its fingerprint names (here: a field
    more). The known fields decode, but the record is not what was written: a dead letter naming the
    trailing bytes, not a scored event (before, the extra bytes were ignored and the lead was scored)."""
    registry = default_registry()
    at = int(time.time() * 1000) - 60_000
    good, tailed = (registry.encode("download", demo_request(lead, at)) for lead in ("L-good", "L-tail"))
    tailed += b"\x0cspring"  # an extra string field's encoding
    letter = worker_dead_letters_one(settings, (b"L-tail", tailed), (b"L-good", good), "trailing_bytes")
    assert (letter["stage"], letter["error_type"]) == ("decode", "TrailingBytes")
    assert letter["error"].startswith(
        f"7 trailing bytes after the download record (it ends at byte {len(tailed) - 7} of {len(tailed)}): "
        "the writer's schema does not match its fingerprint"
    )
    assert "TrailingBytes" in cli(settings, "dlq", "list")


def test_the_worker_dead_letters_an_event_time_in_epoch_seconds_instead_of_scoring_it(
    settings: Settings,
) -> None:
    """Another Kafka client wrote a demo request with its event_time in epoch seconds. The worker scored it
    as an event of January 1970: too old to count, and no sign of why (the lead simply never became hot)."""
    registry = default_registry()
    now = int(time.time() * 1000)
    seconds = now // 1000 - 60
    good = registry.encode("download", demo_request("L-good", now - 60_000))
    in_seconds = registry.encode("download", demo_request("L-secs", seconds))  # encoding checks no times
    letter = worker_dead_letters_one(
        settings, (b"L-secs", in_seconds), (b"L-good", good), "event_time_seconds"
    )
    assert (letter["stage"], letter["error_type"]) == ("validate", "InadmissibleEvent")
    assert letter["error"].startswith(
        f"event_time: {seconds} looks like epoch seconds: as epoch milliseconds"
    )
    assert f"; send {seconds * 1000} for " in letter["error"]
    assert letter["event_id"] == "L-secs-demo"


def test_dlq_list_shows_an_error_as_written_not_as_rich_markup(settings: Settings) -> None:
    """Errors quote what others wrote (a webhook receiver's answer, a lead id): the table read them as rich
    markup, so "[/hooks]" raised MarkupError and `dlq list` failed for every listing that held the letter,
    and "[b]" vanished from the error shown."""
    letter = dead_letter("webhook:json-0", -1, -1, None, None, "webhook", "HTTP 404: no route [/hooks] [b]")
    with Producer(settings) as producer:
        publish(producer, [letter])
    listing = cli(settings, "dlq", "list")
    assert "HTTP 404: no route [/hooks] [b]" in listing


def test_replay_leaves_out_dead_letters_of_a_lead_erased_with_forget(settings: Settings) -> None:
    """A dead letter holds the original bytes (a profile: the email in plain text). After ``leadpulse
    forget`` its replay would put the erased lead's record back on its input topic (profiles are kept
    forever); the worker and the sink would drop it, but the topic would hold it again. It is skipped."""
    from streams.erasures import erasure_record, publish_erasure

    registry = default_registry()
    now = int(time.time() * 1000)
    profile = registry.validate(
        "lead_identified",
        {
            "event_id": "p-gone",
            "event_time": now - 60_000,
            "lead_id": "L-gone",
            "anonymous_id": "a-gone",
            "source": "form",
            "email": "gone@buyer.example",
            "company_domain": "buyer.example",
        },
    )
    visit = {
        "event_id": "v-gone",
        "event_time": now - 50_000,
        "anonymous_id": "a-gone",
        "source": "web",
        "url": "https://x.example/pricing",
    }
    kept = {
        "event_id": "v-kept",
        "event_time": now - 40_000,
        "lead_id": "L-kept",
        "source": "web",
        "url": "https://x.example/pricing",
    }
    letters = [
        dead_letter(
            settings.topic("leads.profiles"),
            0,
            1,
            b"L-gone",
            registry.encode("lead_identified", profile),
            "process",
            "boom",
        ),
        dead_letter(
            settings.topic("events.web_visits"),
            0,
            2,
            b"a-gone",
            registry.encode("web_visit", registry.validate("web_visit", visit)),
            "process",
            "boom",
        ),
        dead_letter(
            settings.topic("events.web_visits"),
            0,
            3,
            b"L-kept",
            registry.encode("web_visit", registry.validate("web_visit", kept)),
            "process",
            "boom",
        ),
    ]
    with Producer(settings) as producer:
        publish(producer, letters)
    publish_erasure(settings, erasure_record("L-gone", ["a-gone"], now))
    report = replay(settings)
    assert report.replayed == 1
    assert sorted(reason for _, reason in report.skipped) == 2 * ["lead erased with `leadpulse forget`"]
    back = [
        i.record["event_id"]
        for t in ("leads.profiles", "events.web_visits")
        for i in read_topic(settings, settings.topic(t), idle_ms=800)
        if isinstance(i, Decoded)
    ]
    assert back == ["v-kept"]


def test_replay_takes_an_erased_lead_out_of_a_dead_lettered_account_score(settings: Settings) -> None:
    """An ``account_score`` names its top leads by id. ``dlq replay`` looked only at a letter's key (the
    company domain) and its ``lead_id``/``anonymous_id``, which an account roll-up has not: the letter went
    back as it was and ``accounts.scores`` (compacted, kept forever) held the erased lead's id again. The
    roll-up is the account's, so it is replayed, without the erased lead (as the sink stores it)."""
    from streams.erasures import erasure_record, publish_erasure

    registry = default_registry()
    now = int(time.time() * 1000)
    top = [{"lead_id": "L-acct-gone", "score": 80.0}, {"lead_id": "L-acct-kept", "score": 50.0}]
    account = {"domain": "buyer.example", "score": 130.0, "leads": 2, "top_leads": top}
    account = registry.validate("account_score", {**account, "as_of": now - 1000, "computed_at": now})
    letter = dead_letter(
        settings.topic("accounts.scores"),
        0,
        7,
        b"buyer.example",
        registry.encode("account_score", account),
        "sink",
        "boom",
    )
    with Producer(settings) as producer:
        publish(producer, [letter])
    publish_erasure(settings, erasure_record("L-acct-gone", [], now))
    dry = cli(settings, "dlq", "replay", "--dry-run")
    assert "would replay 1 record" in dry and "without its erased lead(s) in top_leads" in dry, dry
    report = replay(settings)
    assert report.replayed == 1 and not report.skipped, report
    [back] = [
        i.record
        for i in read_topic(settings, settings.topic("accounts.scores"), idle_ms=800)
        if isinstance(i, Decoded)
    ]
    assert back["top_leads"] == [{"lead_id": "L-acct-kept", "score": 50.0}], back
    assert {k: v for k, v in back.items() if k != "top_leads"} == {
        k: v for k, v in account.items() if k != "top_leads"
    }
    assert len(report.scrubbed) == 1, report
