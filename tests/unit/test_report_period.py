"""Report windows: ``--since``/``--until`` errors name the option and speak in dates, not epoch ms."""

from __future__ import annotations

import datetime as dt

import pytest

from sinks.reports.period import DAY_MS, EARLIEST_MS, LATEST_MS, make_period

pytestmark = pytest.mark.unit

NOW = int(dt.datetime(2026, 11, 28, 12, tzinfo=dt.UTC).timestamp() * 1000)


def test_relative_and_absolute_bounds() -> None:
    period = make_period("30d", "2026-11-28", NOW)
    until = int(dt.datetime(2026, 11, 28, tzinfo=dt.UTC).timestamp() * 1000)
    assert (period.since_ms, period.until_ms) == (NOW - 30 * DAY_MS, until)
    assert make_period(None, None, NOW) == make_period("90d", None, NOW)


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        (
            "yesterday",
            None,
            "--since: expected a date (2026-01-31), a datetime or a relative age (30d), got 'yesterday'",
        ),
        (None, "soon", "--until: expected a date"),
        (
            "30d",
            "2020-01-01",
            "--since must be before --until (got 30d = 2026-10-29 12:00:00 UTC and "
            "2020-01-01 = 2020-01-01 00:00:00 UTC)",
        ),
    ],
)
def test_errors_name_the_option(since: str | None, until: str | None, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        make_period(since, until, NOW)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("since", "until"), [("1000000d", None), ("1000000000000d", None), ("1800-01-01", "2400-01-01")]
)
def test_bounds_beyond_what_clickhouse_stores_are_clamped_to_it(since: str, until: str | None) -> None:
    """``--since 1000000000000d`` ("all of it") overflowed the Int64 parameter and the report came back
    empty (tests/integration/test_reports_edges.py shows it on data)."""
    period = make_period(since, until, NOW)
    assert period.since_ms == EARLIEST_MS
    assert period.until_ms == (LATEST_MS if until else NOW)
