"""Content catalogue files: errors name the entry and the column as the docs spell it."""

from __future__ import annotations

import pytest

from sinks.content_catalogue import CatalogueError, parse_entries

pytestmark = pytest.mark.unit

GOOD = {
    "id": "wp-1",
    "title": "Pricing guide",
    "type": "whitepaper",
    "funnel_stage": "mql",
    "published": "2026-01-31",
}


def test_a_misspelt_column_is_named_with_the_column_it_left_missing() -> None:
    entry = {k: v for k, v in GOOD.items() if k != "title"} | {"titel": "Pricing guide"}
    with pytest.raises(CatalogueError) as caught:
        parse_entries([entry, entry], path="c.csv")
    assert caught.value.problems == [
        (
            1,
            "titel",
            "unknown column (the columns are id, title, type, funnel_stage, url, published, updated)",
        ),
        (1, "title", "missing"),
        (2, "title", "missing"),  # the unknown column is reported once per file
    ]
    assert str(caught.value).startswith("c.csv: 3 invalid entries: entry 1 titel: unknown column")


def test_bad_values_are_named_by_the_documented_column() -> None:
    with pytest.raises(CatalogueError) as caught:
        parse_entries([GOOD | {"published": "31/01/2026", "funnel_stage": "hot"}])
    assert caught.value.problems == [
        (
            1,
            "funnel_stage",
            "'hot' is not one of awareness, lead, nurturing, mql, sal, opportunity, customer, expansion",
        ),
        (1, "published", "'31/01/2026' is not a YYYY-MM-DD date"),
    ]


def test_extra_columns_beside_complete_entries_are_accepted() -> None:
    rows = parse_entries([GOOD | {"owner": "marketing"}], loaded_at_ms=0)
    assert [row[:4] for row in rows] == [("wp-1", "Pricing guide", "whitepaper", "mql")]
