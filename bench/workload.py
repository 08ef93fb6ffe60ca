"""A realistic, seeded event workload for the worker benchmark: what a B2B site's traffic looks like.

Why not ``streams.samples``: samples are uniform and tiny; a worker benchmark must exercise the state shapes
production has, which come from skew and from identity stitching:

- leads are drawn Zipf-Mandelbrot (weight ``1/(rank + 10)``): a few accounts are very active (the top lead
  gets ~1 % of the traffic, the one most per-lead state grows on), the median lead has a couple of events;
- every input type appears, with the field values the default rules score (page categories, content and
  asset types, email links incl. unsubscribes, profiles incl. disqualifying ones, sales activities);
- anonymous visitors (their own Zipf pool) browse before ~60 % of them are identified by a
  ``lead_identified`` carrying their ``anonymous_id``; afterwards most of their events carry both ids and some
  still only the anonymous one (a tab left open), which the worker forwards to the lead;
- ~0.5 % of events are re-sent duplicates (client retries) and ~2 % arrive up to an hour late.

Event times span the ``span_days`` before ``now_ms`` in production order (so nothing is older than the dedup
window and no wall-clock recycle falls due during a run); ``live=True`` stamps the wall clock instead, for
the paced latency phase.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from schemas.registry import SchemaRegistry
from streams.producer import lead_key
from streams.topics import BY_SCHEMA

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
ZIPF_S = 1.0
ZIPF_OFFSET = 10

# (schema, weight) of a known lead's next event; anonymous traffic is behavioural only.
LEAD_MIX = (
    ("web_visit", 46),
    ("content_view", 14),
    ("email_click", 14),
    ("download", 6),
    ("lead_identified", 8),
    ("sales_activity", 6),
)
ANONYMOUS_SHARE = 0.22
IDENTIFIED_SHARE = 0.6  # of anonymous visitors, eventually identified
PAGES = (  # (page_category or None, path, weight)
    ("blog", "/blog/post-{n}", 24),
    ("product", "/product/{n}", 18),
    ("pricing", "/pricing", 11),
    ("case_study", "/customers/case-{n}", 9),
    ("integration", "/integrations/{n}", 7),
    ("comparison", "/compare/vs-{n}", 4),
    ("careers", "/careers", 3),
    ("support", "/support/kb-{n}", 7),
    (None, "/about", 7),
    (None, "/", 10),
)
CONTENT_TYPES = (
    ("blog", 30),
    ("video", 15),
    ("webinar", 10),
    ("case_study", 15),
    ("whitepaper", 15),
    ("slide", 10),
    ("podcast", 5),
)
ASSET_TYPES = (
    ("whitepaper", 33),
    ("ebook", 25),
    ("case_study", 25),
    ("catalog", 8),
    ("inquiry", 6),
    ("demo_request", 3),
)
LINKS = (
    ("https://x.example/webinar/{n}", 40),
    ("https://x.example/blog/post-{n}", 30),
    ("https://x.example/pricing", 15),
    ("https://x.example/product/{n}", 12),
    ("https://esp.example/unsubscribe?c={n}", 2),
    ("bounce://esp.example/{n}", 1),
)
ACTIVITIES = (
    ("first_touch", 20),
    ("accepted", 18),
    ("meeting_booked", 14),
    ("rejected", 8),
    ("opportunity_created", 12),
    ("closed_won", 8),
    ("closed_lost", 6),
    ("onboarded", 6),
    ("upsell_opened", 8),
)
SIZES = (5, 30, 80, 250, 700, 1500, 6000, 20000)
INDUSTRIES = (
    "software",
    "manufacturing",
    "financial_services",
    "healthcare",
    "retail",
    "education",
    "logistics",
    None,
)
SENIORITIES = ("c_level", "vp", "director", "manager", "staff", None, None)
TITLES = ("CTO", "Head of IT", "VP Engineering", "IT Manager", "Developer", "Procurement Lead", "Student")
COUNTRIES = ("JP", "US", "GB", "DE", "FR", "IN", "BR", None)
FLAGS = ((), (), (), (), (), (), (), (), (), (), (), (), (), ("student",), ("competitor",), ("retiree",))


def _table(pairs: tuple[tuple[Any, int], ...]) -> tuple[list[Any], list[float]]:
    values = [p[0] for p in pairs]
    return values, list(itertools.accumulate(float(p[1]) for p in pairs))


def zipf_cum_weights(population: int, s: float = ZIPF_S, offset: int = ZIPF_OFFSET) -> list[float]:
    """Cumulative Zipf-Mandelbrot weights of ranks 1..population (for ``random.choices``)."""
    return list(itertools.accumulate(1.0 / (rank + offset) ** s for rank in range(1, population + 1)))


@dataclass
class _Visitor:
    """An anonymous visitor: identified as ``lead`` after ``identify_after`` events (never if None)."""

    anonymous_id: str
    lead: str | None
    identify_after: int | None
    events: int = 0
    identified: bool = False


@dataclass
class Workload:
    """An endless, seeded stream of ``(schema, record)`` pairs; ``take(n)`` continues where it stopped."""

    seed: int = 1
    expected_events: int = 200_000  # sizes the populations and spreads event time over ``span_days``
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    span_days: float = 10.0
    population: int | None = None  # leads (visitors: 40% of it); default grows with expected_events
    rng: random.Random = field(init=False)
    produced: int = field(default=0, init=False)
    _recent: list[tuple[str, dict[str, Any]]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        leads = self.population or max(20, self.expected_events // 10)
        self.leads = [f"L{self.seed}-{i}" for i in range(leads)]
        visitors = max(10, leads * 2 // 5)
        self.lead_weights = zipf_cum_weights(len(self.leads))
        self.visitor_weights = zipf_cum_weights(visitors)
        self.visitors = []
        for i in range(visitors):
            identified = self.rng.random() < IDENTIFIED_SHARE
            self.visitors.append(
                _Visitor(
                    f"A{self.seed}-{i}",
                    self.rng.choice(self.leads) if identified else None,
                    1 + int(self.rng.expovariate(1 / 4)) if identified else None,
                )
            )
        self.start_ms = self.now_ms - int(self.span_days * DAY_MS)
        self.step_ms = max(1, int(self.span_days * DAY_MS) // max(1, self.expected_events))
        self.lead_mix = _table(LEAD_MIX)
        self.pages = _table(tuple(((c, p), w) for c, p, w in PAGES))
        self.content_types = _table(CONTENT_TYPES)
        self.asset_types = _table(ASSET_TYPES)
        self.links = _table(LINKS)
        self.activities = _table(ACTIVITIES)

    def take(self, count: int, live: bool = False) -> list[tuple[str, dict[str, Any]]]:
        return list(itertools.islice(self.events(live), count))

    def events(self, live: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
        rng = self.rng
        while True:
            self.produced += 1
            if self._recent and rng.random() < 0.005:  # a client retry: same id, same content
                yield rng.choice(self._recent)
                continue
            t = (
                int(time.time() * 1000)
                if live
                else min(self.now_ms, self.start_ms + self.produced * self.step_ms)
            )
            if rng.random() < 0.02:
                t -= rng.randrange(HOUR_MS)
            event = self._anonymous(t) if rng.random() < ANONYMOUS_SHARE else self._lead(t)
            self._recent.append(event)
            if len(self._recent) > 500:
                del self._recent[:250]
            yield event

    def _pick(self, table: tuple[list[Any], list[float]]) -> Any:
        return self.rng.choices(table[0], cum_weights=table[1])[0]

    def _common(self, t: int) -> dict[str, Any]:
        return {"event_id": f"e{self.seed}-{self.produced}", "event_time": t, "received_at": None}

    def _lead(self, t: int) -> tuple[str, dict[str, Any]]:
        lead = self.rng.choices(self.leads, cum_weights=self.lead_weights)[0]
        schema = self._pick(self.lead_mix)
        if schema == "lead_identified":
            return schema, self._profile(t, lead, None)
        if schema == "sales_activity":
            return schema, self._activity(t, lead)
        return schema, self._behaviour(schema, t, lead, None)

    def _anonymous(self, t: int) -> tuple[str, dict[str, Any]]:
        visitor = self.rng.choices(self.visitors, cum_weights=self.visitor_weights)[0]
        visitor.events += 1
        if (
            visitor.lead is not None
            and not visitor.identified
            and visitor.identify_after is not None
            and visitor.events > visitor.identify_after
        ):
            visitor.identified = True  # the form fill that stitches the browsing history to the lead
            return "lead_identified", self._profile(t, visitor.lead, visitor.anonymous_id)
        schema = self.rng.choice(("web_visit", "web_visit", "web_visit", "content_view", "download"))
        lead = visitor.lead if visitor.identified and self.rng.random() < 0.8 else None
        return schema, self._behaviour(schema, t, lead, visitor.anonymous_id)

    def _behaviour(self, schema: str, t: int, lead: str | None, anonymous: str | None) -> dict[str, Any]:
        rng = self.rng
        record = {**self._common(t), "lead_id": lead, "anonymous_id": anonymous}
        n = rng.randrange(40)
        if schema == "web_visit":
            category, path = self._pick(self.pages)
            record.update(
                source="web",
                url="https://x.example" + path.format(n=n),
                page_category=category,
                referrer=rng.choice((None, None, "https://www.google.com/", "https://news.example/")),
                utm_source=rng.choice((None, None, None, "newsletter", "linkedin")),
                utm_medium=None,
                utm_campaign=None,
                utm_term=None,
                utm_content=None,
            )
        elif schema == "content_view":
            record.update(
                source="web",
                content_id=f"c-{n}",
                content_type=self._pick(self.content_types),
                dwell_ms=int(rng.expovariate(1 / 90_000)),
                percent_viewed=round(rng.uniform(0, 100), 1),
                channel=rng.choice(("web", "email", "social", None)),
            )
        elif schema == "download":
            record.update(source="web", content_id=f"asset-{n}", asset_type=self._pick(self.asset_types))
        else:  # email_click
            record.update(
                source="esp",
                campaign_id=f"camp-{n % 12}",
                email_id=f"mail-{n}",
                link_url=self._pick(self.links).format(n=n),
            )
        return record

    def _profile(self, t: int, lead: str, anonymous: str | None) -> dict[str, Any]:
        rng = self.rng
        domain = rng.choice(("corp", "globex", "initech", "umbrella", "stark", "campus"))
        domain += f"{rng.randrange(300)}." + rng.choice(("example", "example", "example", "edu"))
        seniority = rng.choice(SENIORITIES)
        return {
            **self._common(t),
            "lead_id": lead,
            "anonymous_id": anonymous,
            "source": "crm",
            "email": f"{lead.lower()}@{domain}",
            "company_domain": domain,
            "company_name": domain.split(".")[0].title(),
            "company_size": rng.choice(SIZES),
            "industry": rng.choice(INDUSTRIES),
            "job_title": rng.choice(TITLES),
            "seniority": seniority,
            "country": rng.choice(COUNTRIES),
            "flags": list(rng.choice(FLAGS)),
            "owner": f"rep-{rng.randrange(12)}",
            "segment": rng.choice((None, None, "enterprise", "smb")),
        }

    def _activity(self, t: int, lead: str) -> dict[str, Any]:
        activity = self._pick(self.activities)
        reason = self.rng.choice((None, "no budget", "")) if activity == "rejected" else None
        amount = (
            round(self.rng.uniform(5_000, 250_000), 2)
            if activity in ("closed_won", "upsell_opened")
            else None
        )
        return {
            **self._common(t),
            "lead_id": lead,
            "source": "crm",
            "activity": activity,
            "owner": f"rep-{self.rng.randrange(12)}",
            "reason": reason,
            "amount": amount,
        }


@dataclass(frozen=True, slots=True)
class Encoded:
    """One record ready to produce: catalogue topic name (unprefixed), partition key, Avro value."""

    topic: str
    key: bytes
    value: bytes
    event_id: str


def encode(events: list[tuple[str, dict[str, Any]]], registry: SchemaRegistry) -> list[Encoded]:
    """Encode once, produce to any number of prefixes (the bench runs two workers on the same bytes)."""
    return [
        Encoded(
            BY_SCHEMA[schema].name,
            (lead_key(record) or "").encode(),
            registry.encode(schema, record),
            str(record["event_id"]),
        )
        for schema, record in events
    ]
