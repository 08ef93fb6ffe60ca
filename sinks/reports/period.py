"""The report period ``[since, until)`` in epoch milliseconds, parsed from CLI-friendly spellings."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from schemas.coercion import to_millis

DAY_MS = 86_400_000
_RELATIVE = re.compile(r"^(\d+)([dhw])$")
# What a DateTime64 column holds (1900-01-01 to 2299-12-31 UTC): no stored time is outside it, so bounds
# are clamped to it. A bound beyond Int64 milliseconds wrapped round in the query parameter, and
# ``--since 1000000000000d`` (meant as "all of it") gave an empty report.
EARLIEST_MS = -2_208_988_800_000
LATEST_MS = 10_413_791_999_999


@dataclass(frozen=True)
class Period:
    since_ms: int
    until_ms: int

    @property
    def params(self) -> dict[str, int]:
        return {"since": self.since_ms, "until": self.until_ms}


def parse_instant(text: str, now_ms: int) -> int:
    """``2026-01-31``, ``2026-01-31T12:00:00`` (UTC unless an offset is given), or ``30d``/``2w`` ago."""
    match = _RELATIVE.match(text.strip())
    if match:
        unit = {"d": DAY_MS, "h": 3_600_000, "w": 7 * DAY_MS}[match.group(2)]
        return now_ms - int(match.group(1)) * unit
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected a date (2026-01-31), a datetime or a relative age (30d), got {text!r}"
        ) from None
    return to_millis(value)  # exact (naive = UTC): the float timestamp() * 1000 came out 1 ms early at times


def make_period(since: str | None, until: str | None, now_ms: int, default_days: int = 90) -> Period:
    """Errors name the option and show instants as UTC times, never as epoch milliseconds."""
    try:
        until_ms = parse_instant(until, now_ms) if until else now_ms
    except ValueError as exc:
        raise ValueError(f"--until: {exc}") from None
    try:
        since_ms = parse_instant(since, now_ms) if since else until_ms - default_days * DAY_MS
    except ValueError as exc:
        raise ValueError(f"--since: {exc}") from None
    since_ms, until_ms = clamp(since_ms), clamp(until_ms)
    if since_ms >= until_ms:
        raise ValueError(
            f"--since must be before --until (got {since or f'{default_days}d before --until'} = "
            f"{_utc(since_ms)} and {until or 'now'} = {_utc(until_ms)})"
        )
    return Period(since_ms, until_ms)


def clamp(ms: int) -> int:
    """``ms`` within the times ClickHouse stores (EARLIEST_MS..LATEST_MS)."""
    return min(max(ms, EARLIEST_MS), LATEST_MS)


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
