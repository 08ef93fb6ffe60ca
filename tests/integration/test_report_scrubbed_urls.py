"""The content report on URLs the sink scrubbed (``sinks/url_privacy.py``): a visit whose query carried an
address still touches its catalogue item, and a link to a file named ``guide@v2.pdf`` is a click on its
item, not an address (before the fix its path became ``email-hash:…`` and the click was lost to the report).
Rows are built by ``sinks.rows.to_row`` (what the sink stores) and read by the report in chDB."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from sinks.content_catalogue import COLUMNS
from sinks.migrate import migrate
from sinks.query_service import client_runner
from sinks.reports.content import content_report
from sinks.reports.period import DAY_MS, Period
from sinks.rows import EVENTS, Origin, email_hash, to_row
from streams.samples import sample_events

pytestmark = pytest.mark.integration

KEY = b"report-scrub-test-key"
# A period of its own (2036): the other report tests' rows in the session's chDB fall outside it.
SINCE = int(dt.datetime(2036, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)
PERIOD = Period(SINCE, SINCE + 30 * DAY_MS)
CATALOGUE = [  # content_id, content_type, url
    ("URLPRIV-PAGE", "page", "https://up.test/pricing"),
    ("URLPRIV-PDF", "ebook", "https://up.test/ebooks/guide@v2.pdf"),
]


@pytest.fixture
def client(clickhouse_dsn: str) -> Iterator[Client]:
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    migrate(client)
    yield client
    client.close()


def _event(schema: str, offset: int, **fields: Any) -> tuple[Any, ...]:
    record = {
        **next(sample_events(schema, 1)),
        "event_id": f"URLPRIV-{offset}",
        "lead_id": "URLPRIV-L1",
        **fields,
    }
    record["event_time"] = SINCE + offset * 60_000
    spec, row = to_row(schema, record, Origin("t", 0, offset), KEY)
    assert spec is EVENTS
    return row


def test_scrubbed_and_file_name_urls_still_touch_their_catalogue_items(client: Client) -> None:
    visit = _event(
        "web_visit",
        1,
        url="https://up.test/pricing/?utm_source=mail&email=jane%40acme.com#plans",
        referrer=None,
        anonymous_id=None,
    )
    click = _event("email_click", 2, link_url="https://up.test/ebooks/guide@v2.pdf?e=jane@acme.com")
    client.insert("leadpulse.events", [visit, click], column_names=list(EVENTS.insert_columns))
    day = dt.date(2036, 3, 1)
    client.insert(
        "leadpulse.content",
        [(cid, cid, kind, "lead", url, day, day) for cid, kind, url in CATALOGUE],
        column_names=list(COLUMNS[:-1]),
    )
    got = {r["content_id"]: r for r in content_report(client_runner(client), PERIOD)["content"]}
    assert set(got) == {"URLPRIV-PAGE", "URLPRIV-PDF"}, got
    assert (got["URLPRIV-PAGE"]["views"], got["URLPRIV-PAGE"]["unique_leads"]) == (1, 1)
    assert (got["URLPRIV-PDF"]["clicks"], got["URLPRIV-PDF"]["unique_leads"]) == (1, 1)
    token = f"email-hash:{email_hash('jane@acme.com', KEY)}"
    stored = client.query(
        "SELECT DISTINCT coalesce(url, link_url) AS u FROM leadpulse.events "
        "WHERE lead_id = 'URLPRIV-L1' ORDER BY u"
    ).result_rows
    assert stored == [
        (f"https://up.test/ebooks/guide@v2.pdf?e={token}",),
        (f"https://up.test/pricing/?utm_source=mail&email={token}#plans",),
    ]
