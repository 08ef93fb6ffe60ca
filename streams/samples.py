"""Small, seeded sample events of every input type: the smoke run of the README's first command and the
SDK round-trip tests use them. (The realistic traffic generator is ``leadpulse generate``.)"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

BASE_MS = 1_790_000_000_000
PAGES = [
    ("pricing", "https://example.com/pricing"),
    ("product", "https://example.com/product"),
    ("blog", "https://example.com/blog/post-1"),
    ("case_study", "https://example.com/cases/acme"),
    ("careers", "https://example.com/careers"),
]
ACTIVITIES = [
    "first_touch",
    "accepted",
    "rejected",
    "meeting_booked",
    "opportunity_created",
    "closed_won",
    "closed_lost",
    "onboarded",
    "upsell_opened",
]


def _identity(rng: random.Random, i: int) -> dict[str, Any]:
    if rng.random() < 0.5:
        return {"lead_id": f"L{rng.randrange(500)}", "anonymous_id": None}
    return {"lead_id": None, "anonymous_id": f"A{rng.randrange(2000)}"}


def sample_events(schema: str, count: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """``count`` valid records of one input schema; event ids are unique per (schema, seed)."""
    rng = random.Random(f"{schema}:{seed}")
    for i in range(count):
        common: dict[str, Any] = {
            "event_id": f"{schema}-{seed}-{i}",
            "event_time": BASE_MS + i * 1000,
            "source": "samples",
        }
        if schema == "web_visit":
            category, url = rng.choice(PAGES)
            yield {
                **common,
                **_identity(rng, i),
                "url": url,
                "page_category": category,
                "referrer": rng.choice([None, "https://google.com"]),
                "utm_source": rng.choice([None, "newsletter"]),
                "utm_campaign": None,
            }
        elif schema == "email_click":
            yield {
                **common,
                "lead_id": f"L{rng.randrange(500)}",
                "campaign_id": f"c{rng.randrange(5)}",
                "email_id": f"m{rng.randrange(20)}",
                "link_url": "https://example.com/webinar",
            }
        elif schema == "download":
            yield {
                **common,
                **_identity(rng, i),
                "content_id": f"wp-{rng.randrange(10)}",
                "asset_type": rng.choice(["whitepaper", "case_study", "catalog", "ebook"]),
            }
        elif schema == "content_view":
            yield {
                **common,
                **_identity(rng, i),
                "content_id": f"blog-{rng.randrange(30)}",
                "content_type": rng.choice(["blog", "webinar", "case_study"]),
                "dwell_ms": rng.randrange(0, 600_000),
                "percent_viewed": round(rng.uniform(0, 100), 1),
                "channel": rng.choice(["web", "email", None]),
            }
        elif schema == "lead_identified":
            yield {
                **common,
                "lead_id": f"L{rng.randrange(500)}",
                "anonymous_id": f"A{rng.randrange(2000)}",
                "email": f"user{i}@corp{rng.randrange(50)}.example",
                "company_domain": f"corp{rng.randrange(50)}.example",
                "company_size": rng.choice([10, 200, 5000]),
                "industry": rng.choice(["software", "manufacturing"]),
                "job_title": "Head of IT",
                "seniority": rng.choice(["director", "manager", "staff"]),
                "country": "JP",
                "flags": [],
            }
        elif schema == "sales_activity":
            yield {
                **common,
                "lead_id": f"L{rng.randrange(500)}",
                "activity": rng.choice(ACTIVITIES),
                "owner": f"rep{rng.randrange(5)}",
                "reason": None,
                "amount": None,
            }
        else:
            raise ValueError(f"no samples for schema {schema!r}")
