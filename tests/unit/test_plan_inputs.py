"""The plan's odd inputs end in a one-line error naming what to fix (``leadpulse report`` prints a
ValueError as ``leadpulse: error: ...``, exit 2), never in a traceback or a message that names no
option."""

from __future__ import annotations

import pytest

from sinks.reports.plan import RATE_KEYS, parse_rates, reverse_plan

pytestmark = pytest.mark.unit


def test_a_rate_that_is_not_a_number_names_the_option_and_the_key() -> None:
    """It said only "could not convert string to float: 'abc'"."""
    with pytest.raises(ValueError, match=r"^--rates: lead_to_mql must be a rate like 0.05 or 5%, got 'abc'$"):
        parse_rates("visitor_to_lead=5%,lead_to_mql=abc")


def test_rates_that_divide_past_a_float_are_a_value_error() -> None:
    """Four rates of 1e-300 each are in (0, 1]; the visitors needed overflowed to infinity and
    math.ceil raised OverflowError, a traceback."""
    with pytest.raises(ValueError, match=r"^the rates ask for more .* than a number holds: check --rates$"):
        reverse_plan(10e6, 1e6, dict.fromkeys(RATE_KEYS, 1e-300))


def test_a_target_too_large_for_its_deal_size_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^--target / --deal-size is too large"):
        reverse_plan(1e300, 1e-300, dict.fromkeys(RATE_KEYS, 1.0))
