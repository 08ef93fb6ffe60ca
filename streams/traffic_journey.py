"""The building blocks of synthetic traffic: who a person is (profile, company) and a ``Journey``, the
events of one person on a clock relative to the journey's start, placed in the plan's time span afterwards.

Why a relative clock: a journey is written as a story ("reads two posts, comes back a day later, requests a
demo, sales calls 20 minutes after") and only then shifted so that the parts that must happen before "now"
(the identification, a follow-up, an SLA deadline) do. Gaps between sessions scale with the plan's span (a
B2B cycle of weeks is compressed into the span); delays that SLAs measure (follow-ups) never scale.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streams.traffic_catalogue import SITE, ContentItem

T = TypeVar("T")
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
REFERENCE_SPAN_MS = 3 * DAY_MS  # the span session gaps are written for; other spans scale them

# fmt: off
FIRST = (
    "Aiko", "Haruto", "Yui", "Sota", "Emma", "Liam", "Olivia", "Noah", "Mia", "Lukas", "Hannah", "Felix",
    "Priya", "Arjun", "Sofia", "Mateo", "Chloe", "Kenji", "Mei", "Oliver", "Ren", "Grace", "Jonas", "Ines",
)
LAST = (
    "Sato", "Suzuki", "Takahashi", "Tanaka", "Smith", "Johnson", "Brown", "Garcia", "Mueller", "Schmidt",
    "Fischer", "Patel", "Kim", "Nguyen", "Rossi", "Dubois", "Ito", "Watanabe", "Clarke", "Novak",
)
COMPANY_A = (
    "Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Tyrell", "Cyberdyne", "Nakatomi", "Wonka",
    "Soylent", "Vandelay", "Hooli", "Massive", "Oscorp", "Monarch", "Aperture", "Sirius", "Kaiju", "Sakura",
    "Fuji", "Nordwind", "Bluebird", "Quantum",
)
COMPANY_B = (
    "Industries", "Systems", "Holdings", "Logistics", "Robotics", "Analytics", "Foods", "Motors", "Bank",
    "Health", "Retail", "Software", "Works", "Labs",
)
# fmt: on
TITLES = {
    "c_level": ("CEO", "CMO", "CFO", "CTO"),
    "vp": ("VP Sales", "VP Marketing", "VP Revenue Operations"),
    "director": ("Director of Demand Generation", "Head of Marketing Operations", "Sales Director"),
    "manager": ("Marketing Manager", "Sales Operations Manager", "CRM Manager"),
    "staff": ("Marketing Specialist", "Content Writer", "Sales Development Representative", "Analyst"),
}
# fit tiers: (sizes, industries, seniorities, countries). Max fit with the default rules: high 60, mid 38,
# low 17; the persona scripts keep behaviour low enough that only the personas meant to turn hot do.
TIERS: dict[str, tuple[tuple[int, ...], tuple[str, ...], tuple[str | None, ...], tuple[str, ...]]] = {
    "high": (
        (1200, 2500, 5000, 9000),
        ("software", "manufacturing", "financial_services"),
        ("director", "vp", "c_level"),
        ("JP", "US", "DE", "GB"),
    ),
    "mid": (
        (60, 150, 400, 800),
        ("software", "manufacturing", "healthcare", "retail"),
        ("manager", "staff"),
        ("JP", "US", "GB", "FR"),
    ),
    "low": (
        (3, 12, 30, 45),
        ("retail", "education", "healthcare", "media"),
        ("staff", None),
        ("JP", "US", "IN", "BR"),
    ),
}
OWNERS = ("rep-aiko", "rep-ben", "rep-carla", "rep-daichi", "rep-elena", "rep-farid")
TRAFFIC_SOURCES = (  # (weight, referrer, utm_source, utm_medium, utm_campaign)
    (4, "https://www.google.com/", None, None, None),
    (2, "https://www.linkedin.com/", "linkedin", "paid_social", "abm-q3"),
    (2, None, "newsletter", "email", "newsletter"),
    (1, "https://news.ycombinator.com/", None, None, None),
    (3, None, None, None, None),
)
_SOURCE_SLOTS = [source[1:] for source in TRAFFIC_SOURCES for _ in range(source[0])]  # weighted pick table
DWELL_S = {  # content type -> (min, typical full read) seconds
    "blog": (20, 300),
    "whitepaper": (60, 900),
    "ebook": (60, 1200),
    "webinar": (300, 3000),
    "video": (30, 360),
    "case_study": (40, 360),
    "slide": (30, 300),
}


@dataclass(frozen=True, slots=True)
class Company:
    name: str
    domain: str
    size: int
    industry: str
    country: str
    owner: str | None


@dataclass(slots=True)
class Ids:
    """Deterministic id counters of one plan; the seed is in every id so other seeds' plans don't collide."""

    seed: int
    events: Iterator[str] = field(init=False)
    anons: itertools.count[int] = field(default_factory=itertools.count)
    domains: dict[str, int] = field(default_factory=dict)  # company name -> companies so named

    def __post_init__(self) -> None:
        self.events = map(f"ev-{self.seed}-{{:07d}}".format, itertools.count())

    def event(self) -> str:
        return next(self.events)

    def anonymous(self) -> str:
        return f"anon-{self.seed}-{next(self.anons):05d}"


class World:
    """What journeys share: the random stream, id counters, content pools and companies."""

    def __init__(self, rng: random.Random, ids: Ids, pools: dict[str, list[ContentItem]], scale: float):
        self.rng, self.ids, self.pools, self.scale = rng, ids, pools, scale
        self.random = rng.random

    def pick(self, options: Sequence[T]) -> T:
        """``rng.choice`` without its rejection sampling: the generator's most frequent call."""
        return options[int(self.random() * len(options))]

    def item(self, role: str) -> ContentItem:
        return self.pick(self.pools[role])

    def company(self, tier: str) -> Company:
        rng = self.rng
        sizes, industries, _, countries = TIERS[tier]
        a, b = self.pick(COMPANY_A), self.pick(COMPANY_B)
        base = f"{a}{b}".lower()
        taken = self.ids.domains[base] = self.ids.domains.get(base, 0) + 1
        domain = base if taken == 1 else f"{base}{taken}"
        owner = self.pick(OWNERS) if tier == "high" and rng.random() < 0.6 else None
        return Company(
            f"{a} {b}",
            f"{domain}.example",
            self.pick(sizes),
            self.pick(industries),
            self.pick(countries),
            owner,
        )

    def profile(
        self, company: Company, tier: str, seniority: str | None = None, title: str | None = None
    ) -> dict[str, Any]:
        """The identity fields of a ``lead_identified`` record for one person of ``company``."""
        if seniority is None and title is None:
            seniority = self.pick(TIERS[tier][2])
        first, last = self.pick(FIRST), self.pick(LAST)
        size = company.size
        return {
            "email": f"{first}.{last}@{company.domain}".lower(),
            "company_domain": company.domain,
            "company_name": company.name,
            "company_size": size,
            "industry": company.industry,
            "job_title": title or self.pick(TITLES[seniority or "staff"]),
            "seniority": seniority,
            "country": company.country,
            "flags": [],
            "owner": company.owner,
            "segment": "enterprise" if size >= 1000 else "mid_market" if size >= 200 else "smb",
        }


class Journey:
    """One person's events on a relative clock (ms since the journey's start). Before ``identify`` the
    person is only its anonymous id; afterwards tracker events carry both ids, CRM/email events the lead id.
    """

    def __init__(self, world: World, persona: str, lead_id: str | None, anonymous_id: str | None) -> None:
        self.world, self.persona = world, persona
        self.lead_id, self.anonymous_id = lead_id, anonymous_id
        self.t = 0
        self.known = False
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # (relative time, schema, record)
        self.last_url: str | None = None
        self.identified_at: int | None = None
        # (relative time, event id, immediate) of the event meant to make the lead hot
        self.mql: tuple[int, str, bool] | None = None
        self.follow_up_at: int | None = None  # relative time of the first sales follow-up
        self.must_fit = 0  # relative time that must fall before the plan's end (see plan placement)
        self.window = 0.8  # the start falls in this leading share of the free part of the span
        self.anchor: Journey | None = None  # start near this journey (buying committees act together)
        self.outcome: str | None = None
        self.start = 0  # absolute start, set when placed

    # --- clock ----------------------------------------------------------------------------------------
    def pause(self, lo_s: float, hi_s: float) -> None:
        """Within a session: seconds, never scaled."""
        self.t += max(1000, int((lo_s + (hi_s - lo_s) * self.world.random()) * 1000))

    def gap(self, lo_h: float, hi_h: float) -> None:
        """Between sessions or sales steps: hours of the reference span, scaled to the plan's span."""
        self.t += max(1000, int((lo_h + (hi_h - lo_h) * self.world.random()) * HOUR_MS * self.world.scale))

    def session(self) -> None:
        """Start a new visit: the next page view gets a traffic source instead of the previous page."""
        self.last_url = None

    # --- events (records are built as complete literals: this is the generator's hot path) -----------
    def _add(self, schema: str, record: dict[str, Any]) -> dict[str, Any]:
        self.events.append((self.t, schema, record))
        return record

    def visit(
        self,
        item: ContentItem | None = None,
        *,
        url: str | None = None,
        category: str | None = None,
        anonymous_only: bool = False,
    ) -> dict[str, Any]:
        """A page view of a catalogue item (its url and page category) or of a plain site page."""
        if item is not None:
            url, category = item.url, item.page
        page = url or SITE + "/"
        referrer = self.last_url
        utm_source = utm_medium = utm_campaign = None
        if referrer is None:
            pick = int(self.world.random() * len(_SOURCE_SLOTS))
            referrer, utm_source, utm_medium, utm_campaign = _SOURCE_SLOTS[pick]
        self.last_url = page
        return self._add(
            "web_visit",
            {
                "event_id": self.world.ids.event(),
                "event_time": 0,
                "anonymous_id": self.anonymous_id,
                "lead_id": self.lead_id if self.known and not anonymous_only else None,
                "source": "web-tracker",
                "received_at": None,
                "url": page,
                "page_category": category,
                "referrer": referrer,
                "utm_source": utm_source,
                "utm_medium": utm_medium,
                "utm_campaign": utm_campaign,
                "utm_term": None,
                "utm_content": None,
                "page_view_id": None,  # one report per view here: nothing to group (docs/traffic.md)
            },
        )

    def view(self, item: ContentItem, channel: str = "web", engaged: bool = True) -> dict[str, Any]:
        """Reading/watching an item; ``engaged`` readers stay long and see most of it."""
        random_ = self.world.random
        content_type = item.view or item.content_type
        low, full = DWELL_S.get(content_type, (20, 300))
        share = 0.55 + 0.45 * random_() if engaged else 0.05 + 0.35 * random_()
        dwell_s = max(low * share, full * share * (0.8 + 0.45 * random_()))
        return self._add(
            "content_view",
            {
                "event_id": self.world.ids.event(),
                "event_time": 0,
                "anonymous_id": self.anonymous_id,
                "lead_id": self.lead_id if self.known else None,
                "source": "webinar-platform" if content_type == "webinar" else "web-tracker",
                "received_at": None,
                "content_id": item.content_id,
                "content_type": content_type,
                "dwell_ms": int(dwell_s * 1000),
                "percent_viewed": round(min(100.0, share * 100), 1),
                "channel": channel,
                "page_view_id": None,
            },
        )

    def download(self, item: ContentItem) -> dict[str, Any]:
        return self._add(
            "download",
            {
                "event_id": self.world.ids.event(),
                "event_time": 0,
                "anonymous_id": self.anonymous_id,
                "lead_id": self.lead_id if self.known else None,
                "source": "web-forms",
                "received_at": None,
                "content_id": item.content_id,
                "asset_type": item.asset or item.content_type,
            },
        )

    def click(self, campaign: str, link_url: str) -> dict[str, Any]:
        return self._add(
            "email_click",
            {
                "event_id": self.world.ids.event(),
                "event_time": 0,
                "anonymous_id": None,
                "lead_id": self.lead_id,
                "source": "email-esp",
                "received_at": None,
                "campaign_id": campaign,
                "email_id": f"{campaign}-{1 + int(self.world.random() * 3)}",
                "link_url": link_url,
            },
        )

    def identify(self, profile: dict[str, Any], source: str = "web-forms") -> dict[str, Any]:
        """The lead_identified that names the person (and links the anonymous id, if the tracker saw one)."""
        assert self.lead_id is not None, "anonymous visitors are never identified"
        seen_before = bool(self.events)  # the tracker saw this browser before: link its anonymous id
        self.known = True
        self.identified_at = self.t
        record = {
            "event_id": self.world.ids.event(),
            "event_time": 0,
            "anonymous_id": self.anonymous_id if seen_before else None,
            "lead_id": self.lead_id,
            "source": source,
            "received_at": None,
            **profile,
        }
        return self._add("lead_identified", record)

    def sales(
        self, activity: str, owner: str, reason: str | None = None, amount: float | None = None
    ) -> dict[str, Any]:
        assert self.lead_id is not None
        record = {
            "event_id": self.world.ids.event(),
            "event_time": 0,
            "lead_id": self.lead_id,
            "source": "crm",
            "received_at": None,
            "activity": activity,
            "owner": owner,
            "reason": reason,
            "amount": amount,
        }
        return self._add("sales_activity", record)
