"""The synthetic content catalogue of ``leadpulse generate``: what a B2B marketing site publishes, which
funnel stage each item serves, and how visitors touch it (page visit, content view, download).

Why a fixed table rather than random items: reports and docs can then name real items ("the 2019 trends post
is stale and unused"), and the same catalogue loads with ``leadpulse content load`` whatever the seed. Dates
are relative to the plan's end so that "stale" (not updated for over a year) and "unused" (never touched)
stay true whenever the generator runs. Items marked ``unused`` are never offered to any persona.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.catalogue_file import (
    CATALOGUE_SUFFIXES,
    CatalogueError,
    Problem,
    check_entries,
    pick,
    read_entries,
)

SITE = "https://www.example.com"
CATALOGUE_COLUMNS = ("id", "title", "type", "funnel_stage", "url", "published", "updated")
# The generator's own columns after them, so that `--content-out` read back by `--catalogue` is the same
# catalogue (`content load` ignores them)
GENERATOR_COLUMNS = ("roles", "page_category", "view_type", "asset_type")
# The pools persona scripts draw from (docs/traffic.md says which persona uses which).
ROLES = (
    "read", "gated", "webinar", "video", "case_study", "product", "integration", "evaluation", "sales_deck",
    "pricing", "comparison", "immediate", "support", "expansion", "expansion_view",
)  # fmt: skip
IMMEDIATE_ASSETS = ("catalog", "demo_request", "inquiry")  # the immediate pool needs one of each
# content type -> how it is touched (page_category, content_view type, asset_type) and its default roles
TYPE_TOUCHES: dict[str, tuple[str | None, str | None, str | None, tuple[str, ...]]] = {
    "blog": ("blog", "blog", None, ("read",)),
    "whitepaper": (None, "whitepaper", "whitepaper", ("gated",)),
    "ebook": (None, "ebook", "ebook", ("gated",)),
    "webinar": (None, "webinar", None, ("webinar",)),
    "video": (None, "video", None, ("video",)),
    "case_study": ("case_study", "case_study", "case_study", ("case_study",)),
    "product_page": ("product", None, None, ("product",)),
    "integration": ("integration", None, None, ("integration",)),
    "slide": (None, "slide", None, ("sales_deck",)),
    "pricing_page": ("pricing", None, None, ("pricing",)),
    "comparison": ("comparison", None, None, ("comparison",)),
    "catalog": (None, None, "catalog", ("immediate",)),
    "demo_request": (None, None, "demo_request", ("immediate",)),
    "inquiry": (None, None, "inquiry", ("immediate",)),
    "documentation": ("support", None, None, ("support",)),
}


class TrafficCatalogueError(ValueError):
    """A valid catalogue cannot drive the generator (your ids hide a built-in pool). Invalid entries are a
    ``CatalogueError``, as ``content load`` reports them."""


@dataclass(frozen=True, slots=True)
class ContentItem:
    """One catalogue entry. ``page``/``view``/``asset`` say how a visitor touches it: a web_visit with that
    ``page_category``, a content_view with that ``content_type``, a download with that ``asset_type``."""

    content_id: str
    title: str
    content_type: str
    funnel_stage: str
    url: str
    published: dt.date
    updated: dt.date
    page: str | None
    view: str | None
    asset: str | None
    roles: tuple[str, ...]  # what personas use it for; empty = nobody touches it (unused)

    @property
    def unused(self) -> bool:
        return not self.roles

    def row(self) -> dict[str, str]:
        """The entry as ``leadpulse content load`` reads it (CATALOGUE_COLUMNS), then the generator's
        GENERATOR_COLUMNS. Without them a catalogue written by ``--content-out`` and read back by
        ``--catalogue`` lost its roles: the built-in integrations page became a plain product page, no item
        served the ``integration`` pool, and the generator stopped with a KeyError."""
        return {
            "id": self.content_id,
            "title": self.title,
            "type": self.content_type,
            "funnel_stage": self.funnel_stage,
            "url": self.url,
            "published": self.published.isoformat(),
            "updated": self.updated.isoformat(),
            "roles": ";".join(self.roles) or "none",
            "page_category": self.page or "",
            "view_type": self.view or "",
            "asset_type": self.asset or "",
        }


# id, title, type, funnel stage, path, published (days before the end), updated (days before), touched as
# (page_category, content_type, asset_type), roles: the pools personas draw from (no roles = unused).
# fmt: off
_ITEMS: tuple[tuple[str, str, str, str, str, int, int, tuple[str | None, str | None, str | None],
                     tuple[str, ...]], ...] = (
    ("blog-lead-scoring-101", "Lead scoring 101: fit versus behaviour", "blog", "awareness",
     "/blog/lead-scoring-101", 420, 40, ("blog", "blog", None), ("read",)),
    ("blog-the-model", "The Model: reverse-calculating your funnel", "blog", "awareness",
     "/blog/the-model", 300, 300, ("blog", "blog", None), ("read",)),
    ("blog-hot-leads-go-cold", "Why hot leads go cold: follow-up SLAs that work", "blog", "awareness",
     "/blog/hot-leads-go-cold", 120, 15, ("blog", "blog", None), ("read",)),
    ("blog-content-roi", "Measuring content ROI in B2B", "blog", "awareness",
     "/blog/content-roi", 200, 90, ("blog", "blog", None), ("read",)),
    ("blog-intent-data", "Intent data without the hype", "blog", "awareness",
     "/blog/intent-data", 60, 60, ("blog", "blog", None), ("read",)),
    ("blog-gdpr-checklist", "A GDPR checklist for marketers", "blog", "awareness",
     "/blog/gdpr-checklist", 1500, 900, ("blog", "blog", None), ("read",)),  # stale but still read
    ("blog-trends-2019", "B2B marketing trends for 2019", "blog", "awareness",
     "/blog/trends-2019", 2400, 2300, ("blog", "blog", None), ()),  # stale and unused
    ("wp-revenue-ops", "The revenue operations playbook", "whitepaper", "lead",
     "/resources/revenue-ops-playbook", 250, 30, (None, "whitepaper", "whitepaper"), ("gated",)),
    ("wp-abm-at-scale", "Account-based marketing at scale", "whitepaper", "lead",
     "/resources/abm-at-scale", 500, 500, (None, "whitepaper", "whitepaper"), ("gated",)),  # stale
    ("wp-legacy-crm", "Migrating from a legacy CRM", "whitepaper", "lead",
     "/resources/legacy-crm", 1900, 1800, (None, "whitepaper", "whitepaper"), ()),  # stale and unused
    ("ebook-content-strategy", "The B2B content strategy e-book", "ebook", "lead",
     "/resources/content-strategy-ebook", 150, 20, (None, "ebook", "ebook"), ("gated",)),
    ("webinar-scoring-live", "Live: tuning scoring rules with real data", "webinar", "nurturing",
     "/webinars/scoring-live", 45, 45, (None, "webinar", None), ("webinar",)),
    ("webinar-customer-panel", "Customer panel: from MQL to revenue", "webinar", "nurturing",
     "/webinars/customer-panel", 90, 90, (None, "webinar", None), ("webinar",)),
    ("webinar-kickoff-2021", "2021 kickoff webinar", "webinar", "nurturing",
     "/webinars/kickoff-2021", 1400, 1400, (None, "webinar", None), ()),  # stale and unused
    ("video-product-tour", "Product tour in 6 minutes", "video", "nurturing",
     "/videos/product-tour", 180, 25, (None, "video", None), ("video",)),
    ("cs-acme-manufacturing", "How Acme Manufacturing doubled SQLs", "case_study", "nurturing",
     "/customers/acme-manufacturing", 365, 100, ("case_study", "case_study", "case_study"), ("case_study",)),
    ("cs-globex-finance", "Globex Finance: a 4-hour follow-up SLA", "case_study", "mql",
     "/customers/globex-finance", 220, 60, ("case_study", "case_study", "case_study"), ("case_study",)),
    ("cs-initech-software", "Initech: content that sells", "case_study", "mql",
     "/customers/initech-software", 80, 80, ("case_study", "case_study", "case_study"), ("case_study",)),
    ("cs-hooli-retail", "Hooli Retail (draft, just published)", "case_study", "mql",
     "/customers/hooli-retail", 5, 5, ("case_study", "case_study", "case_study"), ()),  # fresh but unused
    ("product-overview", "Product overview", "product_page", "nurturing",
     "/product", 700, 10, ("product", None, None), ("product",)),
    ("product-integrations", "Integrations", "product_page", "nurturing",
     "/product/integrations", 600, 30, ("integration", None, None), ("integration",)),
    ("product-security", "Security and compliance", "product_page", "sal",
     "/product/security", 650, 200, ("product", None, None), ("evaluation",)),
    ("slides-product-overview", "Product overview deck (shared by sales)", "slide", "opportunity",
     "/decks/product-overview", 100, 14, (None, "slide", None), ("sales_deck",)),
    ("pricing", "Pricing", "pricing_page", "mql",
     "/pricing", 700, 7, ("pricing", None, None), ("pricing",)),
    ("compare-spreadsheets", "leadpulse vs. spreadsheets", "comparison", "mql",
     "/compare/spreadsheets", 300, 120, ("comparison", None, None), ("comparison",)),
    ("compare-legacy-suites", "leadpulse vs. legacy marketing suites", "comparison", "mql",
     "/compare/legacy-suites", 800, 600, ("comparison", None, None), ("comparison",)),  # stale, still used
    ("catalog-2025", "Product catalog (PDF)", "catalog", "mql",
     "/resources/catalog", 160, 40, (None, None, "catalog"), ("immediate",)),
    ("form-demo", "Request a demo", "demo_request", "mql",
     "/demo", 700, 60, (None, None, "demo_request"), ("immediate",)),
    ("form-contact-sales", "Contact sales", "inquiry", "mql",
     "/contact-sales", 700, 60, (None, None, "inquiry"), ("immediate",)),
    ("docs-onboarding", "Onboarding guide", "documentation", "customer",
     "/docs/onboarding", 400, 12, ("support", None, None), ("support",)),
    ("docs-api", "API reference", "documentation", "customer",
     "/docs/api", 400, 3, ("support", None, None), ("support",)),
    ("product-advanced-analytics", "Advanced analytics add-on", "product_page", "expansion",
     "/product/advanced-analytics", 60, 20, ("product", None, None), ("expansion",)),
    ("webinar-power-users", "Power users: advanced scoring", "webinar", "expansion",
     "/webinars/power-users", 30, 30, (None, "webinar", None), ("expansion_view",)),
)
# fmt: on


def build_catalogue(end_ms: int) -> list[ContentItem]:
    """The catalogue with dates counted back from the UTC date of ``end_ms``."""
    end = dt.datetime.fromtimestamp(end_ms / 1000, tz=dt.UTC).date()
    items = []
    for cid, title, ctype, stage, path, published, updated, (page, view, asset), roles in _ITEMS:
        items.append(
            ContentItem(
                cid,
                title,
                ctype,
                stage,
                SITE + path,
                end - dt.timedelta(days=published),
                end - dt.timedelta(days=updated),
                page,
                view,
                asset,
                roles,
            )
        )
    return items


def catalogue_from_rows(rows: Iterable[Mapping[str, Any]], where: str = "<rows>") -> list[ContentItem]:
    """Your own catalogue for the generator, from the entries ``leadpulse content load`` takes (id, title,
    type, funnel_stage, url, published, updated), checked by the same rules with the same messages
    (``check_entries``; the generator needs a url too), plus optional columns ``roles`` (names from ROLES,
    ``;``-separated text or a JSON list; ``none`` = nobody touches it), ``page_category``, ``view_type`` and
    ``asset_type``; the type gives the defaults (TYPE_TOUCHES). Raises CatalogueError naming ``where``,
    each bad entry and field."""
    rows = list(rows)
    valid, problems = check_entries(rows, required=("url",), other_columns=GENERATOR_COLUMNS)
    by_number = {entry.number: entry for entry in valid}
    items: list[ContentItem] = []
    for number, row in enumerate(rows, start=1):
        found = len(problems)
        ctype = pick(row, "content_type")
        page, view, asset, roles = TYPE_TOUCHES.get(str(ctype or ""), _NO_TOUCHES)
        roles = _roles(number, row.get("roles"), roles, problems)
        page = _text(number, row, "page_category", problems) or page
        view = _text(number, row, "view_type", problems) or view
        asset = _text(number, row, "asset_type", problems) or asset
        entry = by_number.get(number)
        if entry is None or len(problems) > found:
            continue
        if "immediate" in roles and asset not in IMMEDIATE_ASSETS:
            problems.append((number, "asset_type", f"the immediate role needs one of {IMMEDIATE_ASSETS}"))
        if "gated" in roles and asset is None:
            problems.append((number, "asset_type", "the gated role needs a downloadable asset type"))
        items.append(
            ContentItem(
                entry.content_id,
                entry.title,
                entry.content_type,
                entry.funnel_stage,
                str(entry.url),
                entry.published,
                entry.updated,
                page,
                view,
                asset,
                roles,
            )
        )
    if problems:
        raise CatalogueError(where, sorted(problems, key=lambda problem: problem[0]))
    return items


_NO_TOUCHES: tuple[str | None, str | None, str | None, tuple[str, ...]] = (None, None, None, ())


def _kind(value: Any) -> str:
    """What a JSON value is, for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text(number: int, row: Mapping[str, Any], column: str, problems: list[Problem]) -> str | None:
    """A generator column's text (stripped), None when absent or empty; another JSON type is a problem."""
    value = row.get(column)
    if value is None or isinstance(value, str):
        return (value or "").strip() or None
    problems.append((number, column, f"expected text, got {_kind(value)}"))
    return None


def _roles(number: int, value: Any, default: tuple[str, ...], problems: list[Problem]) -> tuple[str, ...]:
    """The ``roles`` column: ``;``-separated text (a CSV cell; ``,`` works too) or a list of role names (a
    JSON catalogue); ``none`` and blanks are dropped, so ``none`` or an empty list = nobody touches it. Absent
    or empty text = the type's default roles."""
    named: list[tuple[str, str]] = []  # (field to blame, role name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str):
        named = [("roles", name) for name in value.replace(",", ";").split(";")]
    elif isinstance(value, list | tuple):
        for i, name in enumerate(value):
            if isinstance(name, str):
                named.append((f"roles[{i}]", name))
            else:
                problems.append((number, f"roles[{i}]", f"expected a role name (text), got {_kind(name)}"))
    else:
        problems.append(
            (number, "roles", f"expected ;-separated text or a list of role names, got {_kind(value)}")
        )
        return default
    roles = []
    for field, name in named:
        name = name.strip()
        if name in ("", "none"):
            continue
        if name not in ROLES:
            problems.append((number, field, f"unknown role {name!r} (known: {', '.join(ROLES)})"))
        roles.append(name)
    return tuple(roles)


def with_builtin_fallbacks(items: Sequence[ContentItem], end_ms: int) -> list[ContentItem]:
    """``items`` plus the built-in items for every role (and immediate asset) ``items`` leave empty, so any
    catalogue can drive every persona; the exported catalogue then lists what the events touch."""
    pools = by_role(items)
    assets = {i.asset for i in pools.get("immediate", [])}
    ids = {i.content_id for i in items}
    extra = [
        b for b in build_catalogue(end_ms)
        if b.roles and b.content_id not in ids
        and (any(r not in pools for r in b.roles) or ("immediate" in b.roles and b.asset not in assets))
    ]  # fmt: skip
    served = by_role([*items, *extra])
    for role in ROLES:
        if role not in served:  # its built-in item shares an id with one of yours, which does not serve it
            raise TrafficCatalogueError(
                f"no item serves the {role!r} pool and its built-in items' ids are taken by yours; give one "
                f"of your items roles: {role} (docs/traffic.md)"
            )
    return [*items, *extra]


def by_role(items: Iterable[ContentItem]) -> dict[str, list[ContentItem]]:
    pools: dict[str, list[ContentItem]] = {}
    for item in items:
        for role in item.roles:
            pools.setdefault(role, []).append(item)
    return pools


def stale_items(items: Iterable[ContentItem], end_ms: int, days: int = 365) -> list[ContentItem]:
    """Items not updated for more than ``days`` before the end date (the health report's default)."""
    end = dt.datetime.fromtimestamp(end_ms / 1000, tz=dt.UTC).date()
    return [i for i in items if (end - i.updated).days > days]


def catalogue_csv(items: Sequence[ContentItem]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CATALOGUE_COLUMNS + GENERATOR_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(item.row() for item in items)
    return buffer.getvalue()


def catalogue_json(items: Sequence[ContentItem]) -> str:
    return json.dumps([item.row() for item in items], indent=2) + "\n"


def catalogue_format(path: Path) -> str:
    """The file's format by its suffix; another suffix is a ValueError, before any work is done: a
    ``.txt`` was written as CSV that ``content load`` then refused, and a ``.jsonl`` was written as CSV."""
    suffix = path.suffix.lower()
    if suffix not in CATALOGUE_SUFFIXES:
        raise ValueError(
            f"{path}: expected a {', '.join(CATALOGUE_SUFFIXES)} file (as `leadpulse content load`)"
        )
    return suffix[1:]


def read_catalogue_file(path: Path) -> list[ContentItem]:
    """A catalogue for the generator from a ``.csv``, ``.json`` (a list, or ``{"content": [...]}``) or
    ``.jsonl`` file: the file as ``leadpulse content load`` reads it (an unreadable one is a CatalogueError
    naming the line or entry), its rows as ``catalogue_from_rows`` takes them."""
    return catalogue_from_rows(read_entries(path), str(path))


def write_catalogue(items: Sequence[ContentItem], path: Path) -> None:
    """Write the catalogue in the format its suffix names (``catalogue_format``)."""
    kind = catalogue_format(path)
    if kind == "json":
        text = catalogue_json(items)
    elif kind == "jsonl":
        text = "".join(json.dumps(item.row()) + "\n" for item in items)
    else:
        text = catalogue_csv(items)
    path.write_text(text, encoding="utf-8")
