"""A topic named with or without the deployment prefix, also when the prefix begins like a contract name
(``LEADPULSE_TOPIC_PREFIX=leads.``: ``leads.profiles`` is then the contract name, not a prefixed
``profiles``)."""

from __future__ import annotations

import pytest

from streams.dlq import check_filters
from streams.producer import resolve

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("prefix", ["leads.", "events.", "sales.", "acme."])
def test_produce_takes_a_contract_topic_name_under_any_prefix(prefix: str) -> None:
    """`produce --topic leads.profiles` under the prefix `leads.` was 'unknown topic or schema'."""
    assert resolve("leads.profiles", prefix).name == "leads.profiles"
    assert resolve(prefix + "leads.profiles", prefix).name == "leads.profiles"
    assert resolve("events.web_visits", prefix).schema == "web_visit"
    assert resolve("web_visit", prefix).name == "events.web_visits"


@pytest.mark.parametrize("prefix", ["leads.", "events.", "acme."])
def test_dlq_filters_take_a_contract_topic_name_under_any_prefix(prefix: str) -> None:
    """`dlq list --topic leads.hot` under the prefix `leads.` was refused as an unknown topic."""
    check_filters("leads.hot", None, prefix)
    check_filters(prefix + "leads.hot", None, prefix)
    with pytest.raises(ValueError, match="--topic: unknown topic"):
        check_filters("leads.nope", None, prefix)
