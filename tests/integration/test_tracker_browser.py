"""The browser tracker in a real headless Chromium: a page on loopback includes /v1/tracker.js from the
collector (another origin, so CORS is exercised) and its events arrive on the topics.

Needs Debian's ``chromium`` (``.ci/system-deps.sh``) and Playwright for Python; never ``playwright install``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from prometheus_client import CollectorRegistry

from schemas.domain_rules import MAX_DWELL_MS
from streams.broker import EmbeddedBroker
from streams.collector import Collector, serve
from streams.metrics import Metrics
from streams.reader import Decoded, read_topic
from streams.settings import Settings
from streams.web import bound_port

pytestmark = [pytest.mark.integration, pytest.mark.browser]

KEY = "wk_public_site"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="leadpulse:page-category" content="pricing">
<title>Pricing</title></head><body>
<div style="height: 1400px">Plans and prices</div>
<article id="story" data-lp-content-id="cs-42" data-lp-content-type="case_study" style="height: 500px">
  How Acme cut churn by 30%</article>
<div style="height: 1400px"></div>
<a id="dl" href="#" data-lp-download data-lp-content-id="wp-7" data-lp-asset-type="whitepaper">Get the PDF</a>
<script async src="COLLECTOR/v1/tracker.js" data-write-key="KEY"></script>
</body></html>
"""


@dataclass
class Site:
    collector: str
    page: str
    settings: Settings
    metrics: Metrics


@pytest.fixture
async def site(
    broker: EmbeddedBroker, fresh_prefix: str, make_settings: Callable[..., Settings]
) -> AsyncIterator[Site]:
    settings = make_settings(
        kafka_bootstrap=broker.bootstrap, topic_prefix=fresh_prefix, write_keys={"site": KEY}
    )
    metrics = Metrics(CollectorRegistry(), component="collector")
    collector = await serve(Collector(settings, metrics=metrics), "127.0.0.1", 0)
    collector_url = f"http://127.0.0.1:{bound_port(collector)}"
    html = PAGE.replace("COLLECTOR", collector_url).replace("KEY", KEY)

    async def pricing(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def bye(request: web.Request) -> web.Response:
        return web.Response(text="<p>bye</p>", content_type="text/html")

    pages = web.Application()
    pages.router.add_get("/pricing", pricing)
    pages.router.add_get("/bye", bye)
    page_runner = web.AppRunner(pages)
    await page_runner.setup()
    await web.TCPSite(page_runner, "127.0.0.1", 0).start()
    try:
        yield Site(collector_url, f"http://localhost:{bound_port(page_runner)}", settings, metrics)
    finally:
        await page_runner.cleanup()
        await collector.cleanup()


@pytest.fixture
async def launch() -> AsyncIterator[Callable[..., Awaitable[Browser]]]:
    """Start Chromium, optionally with a desktop user agent. The flag, not a context override: Chromium
    sends beacons fired during page unload with the process' own (HeadlessChrome) user agent."""
    browsers: list[Browser] = []
    async with async_playwright() as pw:

        async def start(user_agent: str | None = None) -> Browser:
            args = CHROMIUM_ARGS + ([f"--user-agent={user_agent}"] if user_agent else [])
            browsers.append(await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args))
            return browsers[-1]

        try:
            yield start
        finally:
            for instance in browsers:
                await instance.close()


def ingested(site: Site) -> float:
    value = site.metrics.registry.get_sample_value
    return sum(
        value("leadpulse_events_ingested_total", {"topic": t}) or 0
        for t in ("events.web_visits", "events.downloads", "events.content_views")
    )


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def records(site: Site, topic: str) -> list[dict[str, object]]:
    items = await asyncio.to_thread(
        lambda: list(read_topic(site.settings, site.settings.topic(topic), idle_ms=800))
    )
    return [i.record for i in items if isinstance(i, Decoded)]


TRACKER_LOADED = "window.leadpulse && typeof window.leadpulse.track === 'function'"


async def open_page(
    launch: Callable[..., Awaitable[Browser]], user_agent: str | None = DESKTOP_UA
) -> tuple[BrowserContext, Page]:
    """A fresh browser context and a page in it (a desktop user agent unless told otherwise)."""
    browser = await launch(user_agent)
    context = await browser.new_context()
    return context, await context.new_page()


async def load(page: Page, url: str) -> None:
    """Open ``url`` and wait until the tracker runs on it."""
    await page.goto(url)
    await page.wait_for_function(TRACKER_LOADED)


async def visits_in_order(site: Site) -> list[dict[str, object]]:
    return sorted(await records(site, "events.web_visits"), key=lambda r: int(str(r["event_time"])))


async def test_page_view_content_view_and_download_arrive_from_a_real_browser(
    site: Site, launch: Callable[..., Awaitable[Browser]]
) -> None:
    context, page = await open_page(launch)
    await load(page, site.page + "/pricing?utm_source=newsletter&utm_campaign=spring&utm_medium=email")
    await page.locator("#story").scroll_into_view_if_needed()
    await page.wait_for_timeout(600)  # let the visitor read: dwell time to measure
    await page.locator("#dl").click()  # flushes the page view and the download at once
    await wait_for(lambda: ingested(site) >= 2, 15, "page view and download at the collector")
    await page.goto(site.page + "/bye")  # pagehide: the content view goes out by sendBeacon
    await wait_for(lambda: ingested(site) >= 3, 15, "the content view sent on page hide")
    anonymous_id = next(c["value"] for c in await context.cookies() if c["name"] == "lp_aid")
    await context.close()

    [visit] = await records(site, "events.web_visits")
    assert visit["url"] == site.page + "/pricing?utm_source=newsletter&utm_campaign=spring&utm_medium=email"
    assert (visit["page_category"], visit["utm_source"], visit["utm_medium"], visit["utm_campaign"]) == (
        "pricing",
        "newsletter",
        "email",
        "spring",
    )
    assert visit["utm_term"] is None and visit["referrer"] is None
    [download] = await records(site, "events.downloads")
    assert (download["content_id"], download["asset_type"]) == ("wp-7", "whitepaper")
    [view] = await records(site, "events.content_views")
    assert (view["content_id"], view["content_type"], view["channel"]) == ("cs-42", "case_study", "web")
    assert isinstance(view["dwell_ms"], int) and view["dwell_ms"] >= 300
    assert isinstance(view["percent_viewed"], float) and 0 < view["percent_viewed"] <= 100
    for record in (visit, download, view):
        assert record["anonymous_id"] == anonymous_id
        assert record["source"] == "site"
        assert isinstance(record["received_at"], int)
    assert len({visit["event_id"], download["event_id"], view["event_id"]}) == 3
    assert isinstance(visit["page_view_id"], str) and view["page_view_id"] == visit["page_view_id"]


def _visibility(state: str) -> str:
    """Script that makes the page report ``state`` (hidden: as on a tab switch) and tells the tracker."""
    return (
        "() => { Object.defineProperty(document, 'visibilityState', "
        f"{{value: '{state}', configurable: true}}); "
        "document.dispatchEvent(new Event('visibilitychange')); }"
    )


async def test_a_page_view_reported_in_parts_shares_one_page_view_id_and_the_next_load_gets_another(
    site: Site, launch: Callable[..., Awaitable[Browser]]
) -> None:
    """The tracker reports an element's dwell each time the page is hidden: a reader who switches tabs twice
    sends two or more content_view reports of one view. They must share the page's page_view_id, or the
    worker would score the item once per report and the content report count a view per report."""
    context, page = await open_page(launch)
    await load(page, site.page + "/pricing")
    await page.locator("#story").scroll_into_view_if_needed()
    for _ in range(2):  # read, switch to another tab (a report), come back
        await page.wait_for_timeout(400)
        await page.evaluate(_visibility("hidden"))
        await page.evaluate(_visibility("visible"))
    await wait_for(lambda: ingested(site) >= 3, 15, "the page view and two content view reports")
    await load(page, site.page + "/pricing")  # a second load of the same page: a new page view
    await page.goto(site.page + "/bye")
    await wait_for(lambda: ingested(site) >= 4, 15, "the second page view")
    await context.close()

    first, second = await visits_in_order(site)
    assert first["page_view_id"] != second["page_view_id"]
    views = await records(site, "events.content_views")
    assert len(views) >= 2 and len({v["event_id"] for v in views}) == len(views)
    assert {v["page_view_id"] for v in views} == {first["page_view_id"]}
    assert all(isinstance(v["dwell_ms"], int) and v["dwell_ms"] > 0 for v in views)


async def test_a_content_view_of_more_than_a_day_is_sent_as_a_day_not_lost(
    site: Site, launch: Callable[..., Awaitable[Browser]]
) -> None:
    """The collector refuses a dwell over a day (MAX_DWELL_MS); a tab left in view for longer (a laptop asleep
    over a weekend, a wall display) made the tracker send more, and the view, sent by sendBeacon, which
    reads no answer, was lost. The tracker now sends at most a day. The visitor's clock is moved two days on
    (sent_at moves with it, so the collector's skew correction keeps event_time right)."""
    browser = await launch(DESKTOP_UA)
    context = await browser.new_context()
    await context.add_init_script(
        "(() => { const real = Date.now.bind(Date); Date.now = () => real() + (window.__lpSkew || 0); })();"
    )
    page = await context.new_page()
    await load(page, site.page + "/pricing")
    await page.locator("#story").scroll_into_view_if_needed()
    await page.wait_for_timeout(300)
    await page.evaluate(f"window.__lpSkew = {2 * MAX_DWELL_MS}")  # two days in view
    await page.goto(site.page + "/bye")  # pagehide: the page view and the content view go out
    views = {"topic": "events.content_views"}
    ingested_views = lambda: site.metrics.registry.get_sample_value("leadpulse_events_ingested_total", views)  # noqa: E731
    await wait_for(lambda: (ingested_views() or 0) >= 1, 15, "a content view at the collector")
    await context.close()
    # (a report on hide and one on pagehide: the second carries the few ms between them)
    dwells = sorted(int(str(view["dwell_ms"])) for view in await records(site, "events.content_views"))
    assert dwells[-1] == MAX_DWELL_MS, dwells


async def test_headless_browser_with_its_default_user_agent_is_dropped_as_a_bot(
    site: Site, launch: Callable[..., Awaitable[Browser]]
) -> None:
    context, page = await open_page(launch, user_agent=None)  # "HeadlessChrome" in the user agent
    await load(page, site.page + "/pricing")
    await page.locator("#dl").click()
    await wait_for(
        lambda: (site.metrics.registry.get_sample_value("leadpulse_bots_dropped_total") or 0) >= 2,
        15,
        "the bot's events to be dropped",
    )
    await context.close()
    assert ingested(site) == 0
    assert await records(site, "events.web_visits") == []


async def test_a_route_change_sends_what_was_read_under_the_page_view_it_ends(
    site: Site, launch: Callable[..., Awaitable[Browser]]
) -> None:
    """Review finding: ``leadpulse.page()`` (a single-page app's route change) switched the id first, so the
    dwell read before it went out later under the next page view: one reading, two views, scored twice."""
    context, page = await open_page(launch)
    await load(page, site.page + "/pricing")
    await page.locator("#story").scroll_into_view_if_needed()
    await page.wait_for_timeout(400)
    await page.evaluate("() => window.leadpulse.page()")  # the route changes; the story stays in view
    await page.wait_for_timeout(400)
    await page.goto(site.page + "/bye")
    await wait_for(lambda: ingested(site) >= 4, 15, "two page views and a content view of each")
    await context.close()

    first, second = await visits_in_order(site)
    assert first["page_view_id"] != second["page_view_id"]
    views = await records(site, "events.content_views")
    by_view = {v["page_view_id"] for v in views}
    assert by_view == {first["page_view_id"], second["page_view_id"]}, views
