"""Through the real sink into chDB: an email address inside an event's url, referrer, link_url or utm tag,
or in a score's signal detail, is stored as ``email-hash:<keyed hash>`` (DESIGN §10: emails only as a
keyed hash in analytics), joinable with ``leads.email_hash``; the rest of the URL is stored as sent."""

from __future__ import annotations

import io
import json
import struct
import time

import fastavro
import pytest
from clickhouse_connect.driver.client import Client

from schemas.registry import SCHEMA_DIR, SOE_MAGIC, schema_fingerprint
from sinks.batch import BatchPolicy
from sinks.rows import email_hash
from sinks.sink_loop import ClickHouseSinkLoop
from streams.producer import Producer
from streams.settings import Settings
from tests.integration.test_clickhouse_sink import RunningSink, count, wait_for

pytestmark = pytest.mark.integration


def _old_writer_visit(event_id: str, lead_id: str, url: str, now: int) -> bytes:
    """A web visit in the older writer schema: resolved in Python and re-encoded, not shipped as sent."""
    old = json.loads((SCHEMA_DIR / "history" / "web_visit.v1.avsc").read_text())
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body,
        fastavro.parse_schema(old),
        {"event_id": event_id, "event_time": now, "anonymous_id": None, "lead_id": lead_id, "source": "v1",
         "url": url, "page_category": "pricing", "referrer": None},
    )  # fmt: skip
    return SOE_MAGIC + struct.pack("<Q", schema_fingerprint(old)) + body.getvalue()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "rows"])
def test_emails_in_urls_utm_tags_and_signal_details_are_stored_as_keyed_hash_tokens(
    ch: Client, broker_settings: Settings, fast_path: bool
) -> None:
    """Before the fix the sink stored ``?email=jane%40acme.com`` as sent: the address in clear text in
    ``leadpulse.events`` (and in ``lead_scores.reasons``), out of reach of a search by ``email_hash``.
    Events take the fast path (Avro bodies ClickHouse decodes) or, without it, ``sinks.rows``."""
    settings = broker_settings
    p = settings.topic_prefix
    key = settings.email_hash_key.get_secret_value().encode()
    token = f"email-hash:{email_hash('jane.doe+q3@acme.example', key)}"
    now = int(time.time() * 1000)
    lead = f"{p}L-url"
    page = "https://www.leadpulse.example/pricing/"
    visit = {
        "event_id": f"{p}v1", "event_time": now, "lead_id": lead, "source": "web", "page_category": "pricing",
        "url": f"{page}?utm_source=newsletter&email=Jane.Doe%2Bq3%40acme.example#plans",
        "referrer": "https://mail.example/u/jane.doe+q3@acme.example/inbox", "utm_source": "newsletter",
        "utm_content": "jane.doe+q3@acme.example",
    }  # fmt: skip
    click = {
        "event_id": f"{p}c1", "event_time": now, "lead_id": lead, "source": "esp", "campaign_id": "q3",
        "email_id": "m1",
        "link_url": "https://r.example/?to=https%3A%2F%2Fs.example%2F%3Fe%3Djane.doe%252Bq3%2540acme.example",
    }  # fmt: skip
    clean = {
        **visit,
        "event_id": f"{p}v2",
        "url": f"{page}?utm_source=ads",
        "referrer": None,
        "utm_content": None,
    }
    score = {
        "lead_id": lead, "score": 30.0, "fit": 0.0, "behaviour": 30.0, "previous_score": 0.0, "band": "cold",
        "stage": "lead", "as_of": now, "trigger_event_id": f"{p}v1", "computed_at": now,
        "account_domain": None, "account_score": None, "change_reason": "event",
        "reasons": [{"rule": "pricing", "event_type": "web_visit", "event_id": f"{p}v1", "event_time": now,
                     "points": 30.0, "current_points": 30.0, "detail": visit["url"]}],
    }  # fmt: skip
    profile = {
        "event_id": f"{p}p1", "event_time": now, "lead_id": lead, "source": "crm",
        "email": "Jane.Doe+q3@acme.example",
    }  # fmt: skip
    with Producer(settings) as producer:
        for schema, record in (("web_visit", visit), ("web_visit", clean), ("email_click", click)):
            producer.send(schema, record)
        producer.send("lead_score", score)
        producer.send("lead_identified", profile)
        producer.send_encoded(
            settings.topic("events.web_visits"),
            lead.encode(),
            _old_writer_visit(f"{p}v-old", lead, "mailto:jane.doe+q3@acme.example?subject=hi", now),
        )
    stored = f"startsWith(topic, '{p}')"
    sink = RunningSink(ClickHouseSinkLoop(settings, ch, policy=BatchPolicy(500, 0.2), fast_path=fast_path))
    try:
        wait_for(
            lambda: (
                count(ch, f"SELECT count() FROM leadpulse.events WHERE {stored}") == 4
                and count(ch, f"SELECT count() FROM leadpulse.lead_scores WHERE {stored}") == 1
                and count(ch, f"SELECT count() FROM leadpulse.leads WHERE {stored}") == 1
            ),
            what="the records stored",
        )
    finally:
        sink.close()
    rows = ch.query(
        f"SELECT event_id, url, referrer, utm_content, link_url FROM leadpulse.events WHERE {stored}"
    ).result_rows
    by_id = {r[0].removeprefix(p): r[1:] for r in rows}
    assert by_id["v1"] == (
        f"{page}?utm_source=newsletter&email={token}#plans",
        f"https://mail.example/u/{token}/inbox",
        token,
        None,
    )
    assert by_id["c1"][3] == f"https://r.example/?to=https%3A%2F%2Fs.example%2F%3Fe%3D{token}"
    assert by_id["v-old"][0] == f"mailto:{token}?subject=hi"
    assert by_id["v2"][0] == clean["url"]  # no address: stored byte for byte
    reasons = ch.query(f"SELECT reasons FROM leadpulse.lead_scores WHERE {stored}").result_rows[0][0]
    assert json.loads(reasons)[0]["detail"] == f"{page}?utm_source=newsletter&email={token}#plans"
    anywhere = (
        "SELECT count() FROM {t} WHERE "
        + stored
        + " AND positionCaseInsensitive(toString(tuple(*)), 'jane') > 0"
    )
    assert count(ch, anywhere.format(t="leadpulse.events")) == 0
    assert count(ch, anywhere.format(t="leadpulse.lead_scores")) == 0
    # Analysts join the token with the profile's hash; the page still matches its catalogue url.
    joined = ch.query(
        "SELECT count() FROM leadpulse.events AS e INNER JOIN leadpulse.leads AS l "
        "ON extract(assumeNotNull(e.url), 'email=email-hash:([0-9a-f]{64})') = l.email_hash "
        f"WHERE startsWith(e.topic, '{p}') AND startsWith(l.topic, '{p}')"
    ).result_rows
    assert joined == [(1,)]
    page_key = "trimRight(cutQueryStringAndFragment(assumeNotNull(url)), '/')"
    keys = ch.query(f"SELECT DISTINCT {page_key} FROM leadpulse.events WHERE {stored} AND url LIKE 'https%'")
    assert keys.result_rows == [(page.rstrip("/"),)]
