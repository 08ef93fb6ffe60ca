"""Ids (event_id, lead_id, anonymous_id) are at most 256 characters without control characters, for every
way in: the registry (collector, SDK), the compiled codec, and the worker's and rescore's admissibility check.
A line break in a lead id stopped the notifier's partition (webhook audit); a 60 KB id was accepted."""

from __future__ import annotations

import pytest

from schemas.domain_rules import MAX_ID_CHARS, identity_problem
from schemas.errors import SchemaValidationError
from schemas.fast_codec import codec_for
from schemas.registry import default_registry
from streams.event_hygiene import InadmissibleEvent, check_admissible

pytestmark = pytest.mark.unit

T = 1_790_000_000_000  # epoch ms (2026): an event_time before 2000 is refused too
VISIT = {"event_id": "e-1", "event_time": T, "lead_id": "L-1", "source": "web", "url": "https://x.example/"}


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("lead_id", "L-1\r\nX: 1", "must not contain control characters ('\\r' at position 4)"),
        ("anonymous_id", "a\x00b", "must not contain control characters ('\\x00' at position 2)"),
        ("event_id", "e\x7f", "must not contain control characters ('\\x7f' at position 2)"),
        ("event_id", "e\x85", "must not contain control characters ('\\x85' at position 2)"),
        ("lead_id", "L" * (MAX_ID_CHARS + 1), f"must be at most 256 characters, got {MAX_ID_CHARS + 1}"),
    ],
)
def test_a_bad_id_is_refused_naming_the_field_by_the_registry_and_the_codec(
    field: str, value: str, problem: str
) -> None:
    event = {**VISIT, field: value}
    for validate in (default_registry().validate, codec_for(default_registry()).validate):
        with pytest.raises(SchemaValidationError) as caught:
            validate("web_visit", event)
        assert [(e.field, e.problem) for e in caught.value.errors] == [(field, problem)]
    with pytest.raises(InadmissibleEvent) as refused:
        check_admissible(event, T)
    assert refused.value.reason == "bad_identity" and str(refused.value).endswith(f"{field}: {problem}")


@pytest.mark.parametrize(
    "value", ["山田-太郎", "lead\u00a0with-nbsp", "L" * MAX_ID_CHARS, "émilie@x.example"]
)
def test_any_other_unicode_id_up_to_the_limit_is_accepted(value: str) -> None:
    assert identity_problem(value) is None
    event = {**VISIT, "lead_id": value}
    assert default_registry().validate("web_visit", event)["lead_id"] == value
    assert codec_for(default_registry()).validate("web_visit", event)["lead_id"] == value
    check_admissible(event, T)  # raises InadmissibleEvent if refused
