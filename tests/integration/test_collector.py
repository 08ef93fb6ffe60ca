"""The HTTP collector against the real broker: every documented answer, and accepted events land once."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from streams.broker import EmbeddedBroker
from streams.collector import Collector, serve
from streams.intake import Limits
from streams.metrics import Metrics
from streams.reader import Decoded, read_topic
from streams.settings import Settings
from streams.web import bound_port

pytestmark = pytest.mark.integration

WEB_KEY = "wk_public_web_123"
CRM_KEY = "wk_server_crm_456"
BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)
HOUR_MS = 3_600_000


@dataclass
class Running:
    url: str
    settings: Settings
    metrics: Metrics
    session: aiohttp.ClientSession

    async def post(
        self,
        body: Any,
        *,
        key: str | None = WEB_KEY,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
        all_headers = {"Authorization": f"Bearer {key}"} if key else {}
        all_headers.update(headers or {})
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.session.post(self.url + "/v1/events", data=data, headers=all_headers) as response:
            return response.status, await response.json(), response

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def topic(self, name: str) -> list[Decoded]:
        items = await asyncio.to_thread(
            lambda: list(read_topic(self.settings, self.settings.topic(name), idle_ms=800))
        )
        return [i for i in items if isinstance(i, Decoded)]


@pytest.fixture
def collector_settings() -> dict[str, Any]:
    """Settings a test overrides for its collector (see the rate-limit test)."""
    return {}


@pytest.fixture
async def collector(
    broker: EmbeddedBroker,
    fresh_prefix: str,
    make_settings: Callable[..., Settings],
    collector_settings: dict[str, Any],
) -> AsyncIterator[Running]:
    settings = make_settings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=fresh_prefix,
        write_keys={"web": WEB_KEY, "crm": CRM_KEY},
        **collector_settings,
    )
    metrics = Metrics(CollectorRegistry(), component="collector")
    runner = await serve(
        Collector(settings, metrics=metrics, limits=Limits(max_body_bytes=128 * 1024, max_batch=50)),
        "127.0.0.1",
        0,
    )
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(f"http://127.0.0.1:{bound_port(runner)}", settings, metrics, session)
    finally:
        await runner.cleanup()


def now_ms() -> int:
    return int(time.time() * 1000)


def visit(**fields: Any) -> dict[str, Any]:
    return {
        "type": "web_visit",
        "event_id": str(uuid.uuid4()),
        "event_time": now_ms(),
        "anonymous_id": "a-1",
        "url": "https://example.com/pricing",
        **fields,
    }


def download(**fields: Any) -> dict[str, Any]:
    return {
        "type": "download",
        "event_id": str(uuid.uuid4()),
        "event_time": now_ms(),
        "lead_id": "L-1",
        "content_id": "wp-1",
        "asset_type": "whitepaper",
        **fields,
    }


def content_view(**fields: Any) -> dict[str, Any]:
    return {
        "type": "content_view",
        "event_id": str(uuid.uuid4()),
        "event_time": now_ms(),
        "lead_id": "L-1",
        "content_id": "cs-9",
        "content_type": "case_study",
        "dwell_ms": 5000,
        "percent_viewed": 80,
        **fields,
    }


async def test_one_event_is_acknowledged_after_the_broker_and_stamped_by_the_server(
    collector: Running,
) -> None:
    event = visit(source="spoofed")
    before = now_ms()
    status, body, _ = await collector.post(event)
    assert (status, body["accepted"], body["errors"]) == (202, 1, [])
    [got] = await collector.topic("events.web_visits")
    assert got.record["event_id"] == event["event_id"]
    assert got.record["source"] == "web"  # from the write key, never from the body
    assert before <= got.record["received_at"] <= now_ms()
    assert got.key == b"a-1"
    assert collector.value("leadpulse_events_ingested_total", topic="events.web_visits") == 1
    assert collector.value("leadpulse_collector_requests_total", status="202") == 1


async def test_batch_accepts_good_events_and_names_each_bad_field_by_index(collector: Running) -> None:
    good = [visit(), download(), content_view(), visit(lead_id="L-2", anonymous_id=None)]
    bad_missing = download()
    del bad_missing["content_id"]
    bad_range = content_view(percent_viewed=150)
    bad_type = visit(type="page_view")
    batch = [good[0], bad_missing, good[1], bad_range, good[2], bad_type, good[3]]
    status, body, _ = await collector.post({"batch": batch})
    assert status == 207
    assert (body["accepted"], body["rejected"]) == (4, 3)
    errors = {e["index"]: {f["field"] for f in e["errors"]} for e in body["errors"]}
    assert errors == {1: {"content_id"}, 3: {"percent_viewed"}, 5: {"type"}}
    assert body["errors"][0]["event_id"] == bad_missing["event_id"]
    landed: Counter[str] = Counter()
    for name in ("events.web_visits", "events.downloads", "events.content_views"):
        for item in await collector.topic(name):
            landed[item.record["event_id"]] += 1
    assert landed == Counter({e["event_id"]: 1 for e in good})  # the good ones, exactly once each


async def test_an_event_over_the_input_record_limit_is_rejected_not_acknowledged(collector: Running) -> None:
    """A valid event whose record is over 64 KiB (a huge url) would be dead-lettered by the worker and the
    sink; the collector refuses it in the response instead of answering 202."""
    huge = visit(url="https://example.com/?q=" + "x" * 100_000)
    small = visit()
    status, body, _ = await collector.post({"batch": [huge, small]})
    assert (status, body["accepted"], body["rejected"]) == (207, 1, 1)
    [error] = body["errors"]
    assert (error["index"], error["event_id"]) == (0, huge["event_id"])
    assert error["errors"][0]["field"] == "<event>"
    assert "the input event limit is 65536 bytes" in error["errors"][0]["problem"]
    assert [i.record["event_id"] for i in await collector.topic("events.web_visits")] == [small["event_id"]]


async def test_request_whose_every_event_is_invalid_gets_400(collector: Running) -> None:
    status, body, _ = await collector.post([{"type": "web_visit", "event_id": "x"}])
    assert status == 400
    fields = {f["field"] for f in body["errors"][0]["errors"]}
    assert {"url", "lead_id"} <= fields
    status, body, _ = await collector.post(None, raw=b"{not json")
    assert (status, body["error"]) == (400, "invalid_json")


async def test_oversized_body_and_oversized_batch_get_413(collector: Running) -> None:
    status, body, _ = await collector.post([visit() for _ in range(51)])
    assert (status, body["error"]) == (413, "batch_too_large")
    assert "50" in body["message"]
    huge = visit(url="https://example.com/" + "x" * 140_000)
    status, body, _ = await collector.post(huge)
    assert (status, body["error"]) == (413, "body_too_large")
    assert await collector.topic("events.web_visits") == []
    # The batch was parsed, so its 51 events count; the unread body's events are unknown: it counts 1.
    assert collector.value("leadpulse_collector_events_total", source="unknown", result="too_large") == 52


async def test_event_more_than_23_hours_ahead_is_rejected_but_skewed_clocks_are_corrected(
    collector: Running,
) -> None:
    future = visit(event_time=now_ms() + 25 * HOUR_MS)
    # A client whose clock is 25 h fast stamps both event_time and sent_at with it: corrected, accepted.
    skewed_clock = now_ms() + 25 * HOUR_MS
    skewed = visit(event_time=skewed_clock - 60_000)
    status, body, _ = await collector.post({"batch": [future]})
    assert status == 400
    assert body["errors"][0]["errors"][0]["field"] == "event_time"
    assert "future" in body["errors"][0]["errors"][0]["problem"]
    status, body, _ = await collector.post({"sent_at": skewed_clock, "batch": [skewed]})
    assert status == 202
    [got] = await collector.topic("events.web_visits")
    assert got.record["event_id"] == skewed["event_id"]
    # corrected to about one minute before the server received it
    assert abs(got.record["received_at"] - 60_000 - got.record["event_time"]) < 5_000


async def test_an_event_time_in_epoch_seconds_gets_a_400_naming_the_field_and_nothing_lands(
    collector: Running,
) -> None:
    """Epoch seconds were accepted (202) as an event of January 1970 and scored as far too old to count."""
    seconds = now_ms() // 1000
    in_seconds, good = visit(event_time=seconds), visit()
    status, body, _ = await collector.post({"sent_at": now_ms(), "batch": [in_seconds, good]})
    assert (status, body["accepted"], body["rejected"]) == (207, 1, 1)  # the good one is acknowledged
    [error] = body["errors"]
    assert (error["index"], error["event_id"]) == (0, in_seconds["event_id"])
    [field] = error["errors"]
    assert field["field"] == "event_time"
    assert field["problem"].startswith(
        f"{seconds} looks like epoch seconds: as epoch milliseconds it is 1970-"
    )
    assert f"; send {seconds * 1000} for " in field["problem"]
    status, body, _ = await collector.post(in_seconds)
    assert (status, body["errors"][0]["errors"][0]["field"]) == (400, "event_time")
    assert [r.record["event_id"] for r in await collector.topic("events.web_visits")] == [good["event_id"]]


async def test_known_bots_are_dropped_and_counted(collector: Running) -> None:
    browser_bot = {"Origin": "https://example.com", "User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"}
    status, body, _ = await collector.post([visit(), visit()], headers=browser_bot)
    assert (status, body["accepted"], body["bots_dropped"]) == (202, 0, 2)
    # a server-side integration forwarding its visitors' user agents: only the bot's event is dropped
    human = visit(user_agent=BROWSER_UA)
    status, body, _ = await collector.post([human, visit(user_agent="AhrefsBot/7.0")])
    assert (status, body["accepted"], body["bots_dropped"]) == (202, 1, 1)
    assert collector.value("leadpulse_bots_dropped_total") == 3
    assert collector.value("leadpulse_collector_events_total", source="web", result="bot") == 3
    assert [r.record["event_id"] for r in await collector.topic("events.web_visits")] == [human["event_id"]]


async def test_requests_without_a_valid_write_key_get_401_and_nothing_lands(collector: Running) -> None:
    for key in (None, "wrong-key"):
        status, body, response = await collector.post(visit(), key=key)
        assert (status, body["error"]) == (401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "?write_key=" in body["message"]  # every place a key is accepted is named
    assert await collector.topic("events.web_visits") == []


async def test_key_in_basic_auth_body_or_query_string_is_accepted(collector: Running) -> None:
    basic = "Basic " + base64.b64encode(f"{WEB_KEY}:".encode()).decode()
    events = [visit(), visit(), visit()]
    assert (await collector.post(events[0], key=None, headers={"Authorization": basic}))[0] == 202
    # A key outside the Authorization header means a browser: its user agent is checked for bots.
    browser = {"Content-Type": "text/plain", "User-Agent": BROWSER_UA}
    beacon = json.dumps({"write_key": WEB_KEY, "batch": [events[1]]}).encode()  # text/plain, like sendBeacon
    assert (await collector.post(None, key=None, raw=beacon, headers=browser))[:2] == (
        202,
        {"accepted": 1, "rejected": 0, "bots_dropped": 0, "errors": []},
    )
    async with collector.session.post(
        collector.url + f"/v1/events?write_key={WEB_KEY}", data=json.dumps(events[2]), headers=browser
    ) as response:
        assert (response.status, (await response.json())["accepted"]) == (202, 1)
    got = sorted(r.record["event_id"] for r in await collector.topic("events.web_visits"))
    assert got == sorted(e["event_id"] for e in events)


async def test_sales_activity_needs_a_server_side_key(collector: Running) -> None:
    activity = {
        "type": "sales_activity",
        "event_id": str(uuid.uuid4()),
        "event_time": now_ms(),
        "lead_id": "L-1",
        "activity": "accepted",
        "owner": "rep-1",
    }
    status, body, _ = await collector.post(activity, key=WEB_KEY)
    assert status == 400
    assert body["errors"][0]["errors"][0]["field"] == "type"
    status, body, _ = await collector.post(activity, key=CRM_KEY)
    assert status == 202
    [got] = await collector.topic("sales.activities")
    assert (got.record["source"], got.record["activity"]) == ("crm", "accepted")


async def test_sales_activity_sources_are_the_configured_ones_not_crm_named_keys(
    broker: EmbeddedBroker, fresh_prefix: str, make_settings: Callable[..., Settings]
) -> None:
    backoffice_key = "wk_server_backoffice_789"
    settings = make_settings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=fresh_prefix,
        write_keys={"web": WEB_KEY, "crm": CRM_KEY, "backoffice": backoffice_key},
        crm_write_key_sources=["backoffice"],
    )
    runner = await serve(Collector(settings), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            running = Running(
                f"http://127.0.0.1:{bound_port(runner)}", settings, Metrics(CollectorRegistry()), session
            )
            activity = {
                "type": "sales_activity",
                "event_id": str(uuid.uuid4()),
                "event_time": now_ms(),
                "lead_id": "L-1",
                "activity": "accepted",
                "owner": "rep-1",
            }
            status, body, _ = await running.post(activity, key=CRM_KEY)  # named crm*, but not listed
            assert status == 400
            assert "not accepted from source 'crm'" in body["errors"][0]["errors"][0]["problem"]
            status, _, _ = await running.post(activity, key=backoffice_key)
            assert status == 202
            [got] = await running.topic("sales.activities")
            assert got.record["source"] == "backoffice"
    finally:
        await runner.cleanup()


async def test_cors_preflight_and_error_answers_are_readable_by_browsers(collector: Running) -> None:
    headers = {
        "Origin": "https://www.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,content-encoding",
    }
    async with collector.session.options(collector.url + "/v1/events", headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
        # every header the browser asked for, or it refuses the request (a gzip fetch asks content-encoding)
        assert set(headers["Access-Control-Request-Headers"].split(",")) <= allowed
    _, _, response = await collector.post(visit(), key="nope", headers={"Origin": "https://www.example.com"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_a_wrong_method_or_path_answers_json_like_every_other_error(collector: Running) -> None:
    """aiohttp's own 405 and 404 were text/plain; a client parsing {"error", "message"} choked on them."""
    async with collector.session.get(collector.url + "/v1/events") as response:
        assert response.status == 405
        body = await response.json()
        assert body["error"] == "method_not_allowed" and "POST /v1/events" in body["message"]
        assert "POST" in response.headers["Allow"]
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    async with collector.session.post(collector.url + "/v1/nothing-here", json={}) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"


async def test_health_ready_metrics_and_tracker_are_served(collector: Running) -> None:
    for path, status in (("/health", 200), ("/ready", 200), ("/metrics", 200), ("/v1/tracker.js", 200)):
        async with collector.session.get(collector.url + path) as response:
            assert response.status == status, path
            text = await response.text()
            if path == "/v1/tracker.js":
                assert response.content_type == "application/javascript"
                assert "sendBeacon" in text
            if path == "/metrics":
                assert "leadpulse_collector_requests_total" in text or "leadpulse_build_info" in text


@pytest.mark.parametrize("collector_settings", [{"collector_rate_limit": 1, "collector_rate_burst": 500}])
async def test_a_write_key_over_its_rate_gets_429_with_retry_after_and_nothing_lands(
    collector: Running,
) -> None:
    for _ in range(9):  # 450 of the 500-event burst
        status, body, _ = await collector.post({"batch": [visit() for _ in range(50)]})
        assert (status, body["accepted"]) == (202, 50)
    status, body, _ = await collector.post({"batch": [visit() for _ in range(50)]})  # the last 50 tokens
    assert status == 202
    refused = [visit() for _ in range(50)]
    status, body, response = await collector.post({"batch": refused})
    assert (status, body["error"]) == (429, "rate_limited")
    assert "'web' is over 1 events/s" in body["message"]
    assert 30 <= int(response.headers["Retry-After"]) <= 51  # up to 50 events at 1 event/s
    status, body, _ = await collector.post([visit()], key=CRM_KEY)  # another key has its own budget
    assert status == 202
    landed = {i.record["event_id"] for i in await collector.topic("events.web_visits")}
    assert landed.isdisjoint(e["event_id"] for e in refused)  # refused whole
    assert len(landed) == 501
    assert collector.value("leadpulse_collector_events_total", source="web", result="rate_limited") == 50


# --- found by the stop-17 security audit ------------------------------------------------------------------


async def test_a_number_avro_cannot_hold_is_a_per_event_error_not_a_500(collector: Running) -> None:
    good = visit()
    status, body, _ = await collector.post([good, content_view(dwell_ms=10**25)])
    assert status == 207, body
    assert [(e["index"], [f["field"] for f in e["errors"]]) for e in body["errors"]] == [(1, ["dwell_ms"])]
    status, body, _ = await collector.post([visit(event_time=-(10**25))])
    assert (status, body["errors"][0]["errors"][0]["field"]) == (400, "event_time")
    assert [r.record["event_id"] for r in await collector.topic("events.web_visits")] == [good["event_id"]]


async def test_a_lone_surrogate_is_a_per_event_error_naming_the_field_not_a_500(collector: Running) -> None:
    """JSON may escape half a UTF-16 pair ("\\ud800"); Avro strings are UTF-8 and cannot hold it. It was a
    500 for the whole request, so the tracker (which does not retry) lost the good events with it."""
    good = visit()
    bad = json.dumps(visit(url="https://example.com/")).replace('example.com/"', 'example.com/\\ud800"')
    raw = f"[{json.dumps(good)}, {bad}]".encode()
    status, body, _ = await collector.post(None, raw=raw)
    assert status == 207, body
    assert [(e["index"], [f["field"] for f in e["errors"]]) for e in body["errors"]] == [(1, ["url"])]
    assert [r.record["event_id"] for r in await collector.topic("events.web_visits")] == [good["event_id"]]
    assert collector.value("leadpulse_collector_requests_total", status="500") == 0


async def test_hostile_bodies_get_a_json_4xx_with_cors_never_a_500(collector: Running) -> None:
    deep = ("[" * 60_000 + "]" * 60_000).encode()  # within the test limit of 128 KiB
    cases = [
        ("nested 60k deep", deep, {}, 400, "invalid_json"),
        ("not gzip", b"notgzip", {"Content-Encoding": "gzip"}, 400, "undecodable_body"),
        ("zstd", json.dumps(visit()).encode(), {"Content-Encoding": "zstd"}, 415, "unsupported_encoding"),
        ("gzip bomb", gzip.compress(b" " * 10_000_000), {"Content-Encoding": "gzip"}, 413, "body_too_large"),
        ("envelope typo", json.dumps({"batch": [visit()], "sentAt": 1}).encode(), {}, 400, "invalid_batch"),
        (
            "a 5000-digit number",
            b'[{"type": "content_view", "dwell_ms": ' + b"9" * 5000 + b"}]",
            {},
            400,
            "invalid_json",
        ),
    ]
    for what, raw, headers, status, code in cases:
        async with collector.session.post(
            collector.url + "/v1/events",
            data=raw,
            headers={"Authorization": f"Bearer {WEB_KEY}", "Origin": "https://a.example", **headers},
        ) as response:
            assert response.status == status, (what, await response.text())
            assert (await response.json())["error"] == code, what
            assert response.headers["Access-Control-Allow-Origin"] == "*", what
    assert collector.value("leadpulse_collector_requests_total", status="500") == 0
    assert collector.value("leadpulse_collector_requests_total", status="400") == 4
    zipped = visit()
    async with collector.session.post(
        collector.url + "/v1/events",
        data=gzip.compress(json.dumps(zipped).encode()),
        headers={"Authorization": f"Bearer {WEB_KEY}", "Content-Encoding": "gzip"},
    ) as response:
        assert response.status == 202
    assert [r.record["event_id"] for r in await collector.topic("events.web_visits")] == [zipped["event_id"]]


async def test_a_wrong_key_in_the_header_is_refused_before_the_body_is_read(collector: Running) -> None:
    status, body, _ = await collector.post(None, key="wrong", raw=b"{not json")
    assert (status, body["error"]) == (401, "unauthorized")


async def test_server_side_clients_are_not_bots_wherever_their_key_is(collector: Running) -> None:
    """curl or python-requests with ?write_key= (documented) was taken for a browser and dropped as a bot
    behind a 202. Browsers send an Origin with every POST; only then is the request's user agent the
    visitor's."""
    curl = {"User-Agent": "curl/8.5.0"}
    server_side = visit()
    async with collector.session.post(
        collector.url + f"/v1/events?write_key={WEB_KEY}", data=json.dumps(server_side), headers=curl
    ) as response:
        assert (response.status, (await response.json())["bots_dropped"]) == (202, 0)
    headless = {"User-Agent": "Mozilla/5.0 HeadlessChrome/120.0", "Origin": "https://www.example.com"}
    status, body, _ = await collector.post(
        visit(),
        key=None,
        raw=json.dumps({"write_key": WEB_KEY, "batch": [visit()]}).encode(),
        headers=headless,
    )
    assert (status, body["accepted"], body["bots_dropped"]) == (202, 0, 1)
    status, body, _ = await collector.post([visit(user_agent=123)])
    assert (status, body["errors"][0]["errors"][0]["field"]) == (400, "user_agent")
    got = [r.record["event_id"] for r in await collector.topic("events.web_visits")]
    assert got == [server_side["event_id"]]


async def test_a_browser_key_cannot_set_the_crm_fields_of_a_profile(collector: Running) -> None:
    """The browser key is public: with it anyone could disqualify a lead (flags), take it over (owner) or
    change its SLA (segment). A form may still identify a visitor and say who they are."""
    profile = {
        "type": "lead_identified",
        "event_id": str(uuid.uuid4()),
        "event_time": now_ms(),
        "anonymous_id": "a-1",
        "lead_id": "L-7",
        "email": "ceo@victim.example",
        "job_title": "CTO",
    }
    spoof = {**profile, "event_id": "spoof", "flags": ["competitor"], "owner": "rep-x", "segment": "smb"}
    status, body, _ = await collector.post([profile, spoof])
    assert status == 207, body
    assert [f["field"] for f in body["errors"][0]["errors"]] == ["flags", "owner", "segment"]
    assert "server-side write key" in body["errors"][0]["errors"][0]["problem"]
    crm = {**spoof, "event_id": "from-crm"}
    assert (await collector.post([crm], key=CRM_KEY))[0] == 202
    got = sorted(r.record["event_id"] for r in await collector.topic("leads.profiles"))
    assert got == sorted([profile["event_id"], "from-crm"])


async def test_a_client_gone_before_its_body_ended_is_a_4xx_not_an_internal_error(collector: Running) -> None:
    """A beacon cancelled by the page unloading, a phone losing signal: the body ends early. request.read()
    raised ConnectionResetError, which the middleware logged as an unexpected error with a traceback and
    counted as status 500, so the collector's 5xx counter grew with every aborted upload."""
    host, port = collector.url.removeprefix("http://").split(":")
    head = f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WEB_KEY}\r\n"
    for framing, part in (
        ("Content-Length: 1000\r\n\r\n", b'[{"type":'),
        ("Transfer-Encoding: chunked\r\n\r\n", b'5\r\n[{"ty\r\n'),
    ):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write((head + framing).encode() + part)
        await writer.drain()
        writer.close()
    requests = "leadpulse_collector_requests_total"
    deadline = time.monotonic() + 5
    while collector.value(requests, status="400") + collector.value(requests, status="500") < 2:
        assert time.monotonic() < deadline, "the collector did not finish the two requests"
        await asyncio.sleep(0.05)
    assert (collector.value(requests, status="400"), collector.value(requests, status="500")) == (2, 0)
