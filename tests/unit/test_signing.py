"""Webhook signatures, bodies and retry timing; the notifier's commit bookkeeping; collector rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition

from agents.notifier_group import PendingOffsets
from schemas.registry import default_registry
from sinks.webhook import (
    RetryPolicy,
    WebhookTarget,
    json_body,
    sign,
    signature_header,
    slack_body,
    verify_signature,
)
from streams.bots import is_bot
from streams.intake import (
    Accepted,
    BodyError,
    Limits,
    Rejected,
    key_from_authorization,
    normalise_event,
    parse_body,
    source_for_key,
)

pytestmark = pytest.mark.unit

SECRET = "whsec_test"
BODY = b'{"lead_id":"L-1","notification_id":"n-1"}'
NOW = 1_750_000_000


def hot(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "lead_id": "L-1",
        "notification_id": "n-1",
        "score": 120.0,
        "fit": 40.0,
        "behaviour": 80.0,
        "reason": "score_threshold",
        "became_hot_at": NOW * 1000,
        "sla_due_at": NOW * 1000 + 86_400_000,
        "owner": "rep-7",
        "email": "ada@acme.io",
        "company_name": "Acme",
        "company_domain": "acme.io",
        "company_size": 250,
        "industry": "software",
        "job_title": "CTO",
        "country": "DE",
        "account_score": None,
        "signals": [
            {
                "rule": "pricing_page",
                "event_type": "web_visit",
                "event_id": "e1",
                "event_time": NOW * 1000,
                "points": 30.0,
                "current_points": 28.0,
                "detail": "https://acme.io/pricing",
            },
            {
                "rule": "demo_request",
                "event_type": "download",
                "event_id": "e2",
                "event_time": NOW * 1000,
                "points": 60.0,
                "current_points": 60.0,
                "detail": None,
            },
        ],
    }
    base.update(fields)
    return base


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, BODY) == expected
    assert signature_header(SECRET, BODY, NOW) == f"t={NOW},v1={expected}"


def test_receiver_accepts_a_fresh_valid_signature() -> None:
    assert verify_signature(SECRET, signature_header(SECRET, BODY, NOW), BODY, tolerance_s=300, now=NOW + 299)


@pytest.mark.parametrize(
    "header, body, secret, now",
    [
        (signature_header(SECRET, BODY, NOW), BODY + b" ", SECRET, NOW),  # body changed
        (signature_header(SECRET, BODY, NOW), BODY, "other-secret", NOW),  # wrong secret
        (signature_header(SECRET, BODY, NOW), BODY, SECRET, NOW + 301),  # replayed too late
        (signature_header(SECRET, BODY, NOW), BODY, SECRET, NOW - 301),  # from the future
        (f"t={NOW}", BODY, SECRET, NOW),  # no MAC
        (f"v1={sign(SECRET, NOW, BODY)}", BODY, SECRET, NOW),  # no timestamp
        ("garbage", BODY, SECRET, NOW),
        (None, BODY, SECRET, NOW),
        # anyone can send these: a non-ASCII MAC raised TypeError out of compare_digest (a 500, not a 401)
        (f"t={NOW},v1=é{sign(SECRET, NOW, BODY)[1:]}", BODY, SECRET, NOW),
        (f"t={NOW},v1=\udcff", BODY, SECRET, NOW),
    ],
)
def test_receiver_rejects_tampered_stale_or_malformed_signatures(
    header: str | None, body: bytes, secret: str, now: int
) -> None:
    assert not verify_signature(secret, header, body, tolerance_s=300, now=now)


def test_any_of_several_v1_values_verifies_during_secret_rotation() -> None:
    header = f"t={NOW},v1={sign('old', NOW, BODY)},v1={sign(SECRET, NOW, BODY)}"
    assert verify_signature(SECRET, header, BODY, now=NOW)
    assert verify_signature("old", header, BODY, now=NOW)


def test_json_body_is_the_hot_lead_record_and_fits_its_schema() -> None:
    payload = json.loads(json_body(hot()))
    assert payload["type"] == "lead.hot"
    assert payload["became_hot_at_iso"].endswith("Z")
    record = {k: v for k, v in payload.items() if k not in ("type", "became_hot_at_iso", "sla_due_at_iso")}
    assert default_registry().validate("hot_lead", record) == hot()


def test_slack_shows_the_deadline_in_the_readers_time_zone_and_how_long_the_clock_is() -> None:
    """A UTC-only deadline was nine hours off for a rep in Tokyo, and nothing said whether it was the 1 h
    clock of a direct inquiry or the 24 h one: Slack's date token renders in each reader's zone."""
    due = NOW * 1000 + 3_600_000
    text = json.loads(slack_body(hot(sla_due_at=due)))["blocks"][1]["text"]["text"]
    iso = datetime.fromtimestamp(due / 1000, UTC).isoformat().replace("+00:00", "Z")
    assert f"<!date^{due // 1000}^{{date_short_pretty}} {{time}}|{iso}>" in text
    assert "(1 h clock, owner rep-7)" in text
    day = json.loads(slack_body(hot()))["blocks"][1]["text"]["text"]
    assert "(24 h clock, owner rep-7)" in day
    short = json.loads(slack_body(hot(sla_due_at=NOW * 1000 + 30 * 60_000)))["blocks"][1]["text"]["text"]
    assert "(30 min clock, owner rep-7)" in short


def test_slack_body_says_who_why_and_when() -> None:
    payload = json.loads(slack_body(hot()))
    text = json.dumps(payload)
    assert "ada@acme.io" in payload["text"] and "Acme" in payload["text"]
    assert "demo_request" in text and "pricing_page" in text
    assert text.index("demo_request") < text.index("pricing_page")  # strongest signal first
    assert "Follow up before" in text and "rep-7" in text
    assert (
        WebhookTarget("slack-0", "https://hooks.slack.com/services/T/B/secret", "slack").host
        == "hooks.slack.com"
    )


def test_slack_body_tells_a_rep_what_the_score_is_made_of_why_it_is_hot_and_who_owns_it() -> None:
    """The signals are behaviour only: the headline shows the fit part too (40 of 120 here). A direct
    inquiry says so (its SLA is the short one), and a lead nobody owns says that nobody does."""
    inquiry = json.loads(slack_body(hot(reason="immediate_mql:asset_type.demo_request", owner=None)))
    assert "score 120 (fit 40 + behaviour 80): direct inquiry (asset_type.demo_request)" in inquiry["text"]
    assert "h clock, no owner assigned)" in inquiry["blocks"][1]["text"]["text"]
    threshold = json.loads(slack_body(hot()))["text"]
    assert threshold.endswith("score 120 (fit 40 + behaviour 80): score over the MQL threshold")
    no_clock = json.loads(slack_body(hot(owner=None, sla_due_at=None)))["blocks"][1]["text"]["text"]
    assert "*Owner:* none assigned" in no_clock and "Follow up before" not in no_clock


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=8.0)
    rnd = random.Random(1)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)):
        delays = {policy.delay(attempt, rnd) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered: not the same wait for every retrying client
    assert policy.delay(1, rnd, retry_after_s=3) == 3
    assert policy.delay(1, rnd, retry_after_s=3600) == 8.0
    # a floor, not a replacement: Retry-After 0 spent every attempt at once (a dead letter in milliseconds)
    assert all(2.0 <= policy.delay(3, rnd, retry_after_s=0) <= 4.0 for _ in range(20))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(value: str, seconds: float | None) -> None:
    from sinks.webhook import _retry_after

    assert _retry_after({"Retry-After": value}) == seconds


def test_offsets_commit_only_up_to_the_lowest_unfinished_notification() -> None:
    tp = TopicPartition("leads.hot", 0)
    pending = PendingOffsets()
    for offset in (10, 11, 12):
        pending.add(tp, offset, parts=2)  # two targets
    pending.done(tp, 11)
    pending.done(tp, 11)
    pending.done(tp, 12)
    assert pending.committable() == {tp: 10}
    pending.done(tp, 10)
    assert pending.committable() == {tp: 10}  # one target still delivering offset 10
    pending.done(tp, 10)
    assert pending.committable() == {tp: 12}
    pending.done(tp, 12)
    assert pending.committable() == {tp: 13}
    pending.drop([tp])
    pending.done(tp, 13)  # completion after a revoke is ignored
    assert pending.committable() == {}


def test_a_completion_from_before_a_revocation_does_not_count_for_the_offset_added_again() -> None:
    tp = TopicPartition("leads.hot", 0)
    pending = PendingOffsets()
    pending.add(tp, 5, parts=2)
    before = pending.epoch(tp)
    pending.drop([tp])  # revoked, then assigned back and fetched again
    pending.add(tp, 5, parts=2)
    pending.done(tp, 5, before)  # the first copy's answer from one target
    pending.done(tp, 5, pending.epoch(tp))  # the copy fetched again, waiting for that answer
    assert pending.committable() == {tp: 5}  # the other target still delivering


def test_batch_shapes_and_limits() -> None:
    limits = Limits(max_batch=2)
    assert len(parse_body(b'[{"a":1},{"a":2}]', limits).events) == 2
    envelope = parse_body(b'{"write_key":"k","sent_at":5,"batch":[{"a":1}]}', limits)
    assert (envelope.write_key, envelope.sent_at, envelope.events) == ("k", 5, [{"a": 1}])
    assert parse_body(b'{"type":"web_visit","write_key":"k"}', limits).events == [{"type": "web_visit"}]
    for raw, status, code in (
        (b"[1,2,3]", 413, "batch_too_large"),
        (b"nope", 400, "invalid_json"),
        (b"[]", 400, "empty_batch"),
        (b'"x"', 400, "invalid_body"),
    ):
        with pytest.raises(BodyError) as err:
            parse_body(raw, limits)
        assert (err.value.status, err.value.code) == (status, code)


def test_write_keys_from_bearer_or_basic_and_matched_to_their_source() -> None:
    assert key_from_authorization("Bearer abc") == "abc"
    assert key_from_authorization("Basic " + base64.b64encode(b"abc:").decode()) == "abc"
    assert key_from_authorization("Basic !!!") is None
    assert key_from_authorization("Token abc") is None
    keys = {"web": b"abc", "crm": b"xyz"}
    assert [source_for_key(keys, k) for k in ("abc", "xyz", "ab", "", None)] == [
        "web",
        "crm",
        None,
        None,
        None,
    ]


def test_skew_is_corrected_before_the_future_limit_applies() -> None:
    hour = 3_600_000
    received = NOW * 1000
    event: dict[str, object] = {"type": "web_visit", "event_id": "e", "anonymous_id": "a", "url": "u"}

    def normalise(raw: dict[str, object], sent_at: int | None) -> Accepted | Rejected:
        return normalise_event(
            raw,
            0,
            source="web",
            received_at=received,
            batch_sent_at=sent_at,
            registry=default_registry(),
            limits=Limits(),
        )

    # a client clock 5 h slow: event stamped 1 s before sending, both with the slow clock
    late_clock = normalise({**event, "event_time": received - 5 * hour - 1000}, received - 5 * hour)
    assert not isinstance(late_clock, Rejected) and late_clock.record["event_time"] == received - 1000
    ahead = normalise({**event, "event_time": received + 24 * hour}, None)
    assert isinstance(ahead, Rejected) and ahead.errors[0].field == "event_time"
    no_time = normalise(event, None)
    assert not isinstance(no_time, Rejected) and no_time.record["event_time"] == received


def test_a_skew_that_pushes_event_time_out_of_avro_long_is_an_error_not_a_crash() -> None:
    """event_time -2**63 with sent_at 2**63-1 is each in range, but the corrected time is not: fastavro
    raised OverflowError and the collector answered 500 for the whole request."""
    result = normalise_event(
        {"type": "web_visit", "event_id": "e", "anonymous_id": "a", "url": "u", "event_time": -(2**63)},
        0,
        source="web",
        received_at=NOW * 1000,
        batch_sent_at=2**63 - 1,
        registry=default_registry(),
        limits=Limits(),
    )
    assert isinstance(result, Rejected) and [e.field for e in result.errors] == ["sent_at"]


@pytest.mark.parametrize("skew_h", [-24, -2, 2, 30])
def test_an_event_without_event_time_is_received_at_whatever_the_clients_sent_at(skew_h: int) -> None:
    """A missing event_time is the server's receipt time: the client's skew (sent_at) must not move it
    (it did: 2 h into the future for a clock 2 h slow, a day into the past for one a day fast, and a
    clock more than 23 h slow got the event refused as in the future)."""
    received = NOW * 1000
    event = {"type": "web_visit", "event_id": "e", "anonymous_id": "a", "url": "u"}
    result = normalise_event(
        event,
        0,
        source="web",
        received_at=received,
        batch_sent_at=received + skew_h * 3_600_000,
        registry=default_registry(),
        limits=Limits(),
    )
    assert isinstance(result, Accepted), result
    assert result.record["event_time"] == received


@pytest.mark.parametrize(
    "agent, bot",
    [
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", True),
        ("facebookexternalhit/1.1", True),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0", True),
        ("", True),
        (None, True),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Safari/605.1.15",
            False,
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0 Safari/537.36",
            False,
        ),
    ],
)
def test_known_bots_are_recognised_by_user_agent(agent: str | None, bot: bool) -> None:
    assert is_bot(agent) is bot


def test_the_notifier_refuses_to_send_unsigned_json_webhooks_but_slack_needs_no_secret() -> None:
    from agents.notifications import Notifier
    from streams.settings import load_settings

    json_target = [WebhookTarget("json-0", "https://crm.example.com/hook")]
    with pytest.raises(ValueError, match="LEADPULSE_WEBHOOK_SECRET is not set"):
        Notifier(load_settings(), targets=json_target)
    slack = [WebhookTarget("slack-0", "https://hooks.slack.com/services/T/B/x", "slack")]
    assert Notifier(load_settings(), targets=slack).targets == slack
    assert (
        Notifier(load_settings(webhook_secret="s3cret-value-012"), targets=json_target).targets == json_target
    )


async def test_a_delivery_error_names_the_target_not_its_url() -> None:
    """A URL's path is often its token; aiohttp's error for a URL it cannot use printed it in full into the
    notifier's log and the dead letter's ``error``."""
    import aiohttp

    from sinks.webhook import WebhookSender

    async def no_wait(_: float) -> None:
        return None

    target = WebhookTarget("json-3", "ftp://hooks.example.com/TOKEN888")
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(session, SECRET, policy=RetryPolicy(max_attempts=1), sleep=no_wait)
        result = await sender.deliver(target, {"notification_id": "n-1", "lead_id": "L-1"})
    assert not result.ok
    assert "TOKEN888" not in (result.error or "")
    assert "<json-3 at hooks.example.com>" in (result.error or "")
