"""Known bots by user agent: their "visits" are dropped at the collector and counted, never scored.

Why a substring list and not a full UA parser: the collector checks every request, so the check must cost
microseconds, and the traffic that matters (crawlers, link unfurlers, uptime checkers, headless scrapers)
announces itself with a stable token. The list follows the common tokens of the IAB/ABC-style and
``isbot``-style lists; extend ``BOT_TOKENS`` (lower case) when a new crawler shows up in the data.
An empty user agent also counts as a bot: every real browser sends one. The collector applies this
to the *visitor's* user agent only (browser requests, or a ``user_agent`` forwarded per event), never
to a server-side integration's own HTTP client, which legitimately says ``python-requests`` or ``curl``.
"""

from __future__ import annotations

import re

BOT_TOKENS: tuple[str, ...] = (
    "bot",  # googlebot, bingbot, yandexbot, duckduckbot, applebot, slackbot, twitterbot, ...
    "crawl",  # crawler, crawling
    "spider",  # baiduspider, yisouspider
    "slurp",  # Yahoo
    "facebookexternalhit",
    "facebookcatalog",
    "linkedinbot",
    "embedly",
    "quora link preview",
    "whatsapp",
    "skypeuripreview",
    "headlesschrome",
    "phantomjs",
    "puppeteer",
    "playwright",
    "selenium",
    "lighthouse",
    "pingdom",
    "uptimerobot",
    "statuscake",
    "site24x7",
    "newrelicpinger",
    "datadog synthetics",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "aiohttp/",
    "go-http-client",
    "java/",
    "okhttp",
    "apache-httpclient",
    "libwww-perl",
    "scrapy",
    "feedfetcher",
    "mediapartners-google",
    "adsbot",
    "google-inspectiontool",
    "preview",
    "archive.org_bot",
    "ia_archiver",
    "semrush",
    "ahrefs",
    "mj12bot",
    "dotbot",
    "petalbot",
    "bytespider",
    "gptbot",
    "claudebot",
    "ccbot",
    "perplexitybot",
)

_BOT_RE = re.compile("|".join(re.escape(token) for token in BOT_TOKENS))


def is_bot(user_agent: str | None) -> bool:
    """True for a known bot or a missing user agent; matching is case-insensitive on substrings."""
    if not user_agent or not user_agent.strip():
        return True
    return _BOT_RE.search(user_agent.lower()) is not None
