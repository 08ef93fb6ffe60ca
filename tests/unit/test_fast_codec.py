"""The worker's outputs through the compiled encoder (``schemas.fast_codec``): the registry's exact bytes.

The worker encodes every ``lead_score``, ``stage_transition``, ``hot_lead``, ``sla_timeout`` and
``account_score`` with the compiled path (nested ``Signal``/``AccountLead`` records included). Checked two
ways: the real outputs of the pure core over a realistic workload take the fast path and give fastavro's
bytes, and generated records with awkward values (NaN, infinities, huge ints, non-ASCII, missing fields, wrong
types) give the same bytes or the same error as the registry.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.account import HOP_FIELDS, AccountState, account_score_record, fold_lead_score
from agents.core import step
from agents.rules import load_rules
from agents.worker_records import ACCOUNT_HOP_LAST
from bench.workload import Workload
from schemas.errors import SchemaError, TrailingBytes
from schemas.fast_codec import codec_for
from schemas.fast_decode import Undecidable, compile_reader, decode_body
from schemas.registry import HEADER_LEN, default_registry
from streams.producer import lead_key

pytestmark = pytest.mark.unit

REGISTRY = default_registry()
CODEC = codec_for(REGISTRY)
OUTPUTS = ("lead_score", "stage_transition", "hot_lead", "sla_timeout", "account_score")


def _core_outputs(events: int) -> list[tuple[str, dict[str, Any]]]:
    """What the worker would encode for a seeded workload (identity forwards left out)."""
    rules = load_rules(None)
    workload = Workload(seed=7, expected_events=events)
    states: dict[str, Any] = {}
    accounts: dict[str, AccountState | None] = {}
    found: list[tuple[str, dict[str, Any]]] = []
    for schema, record in workload.take(events):
        key = lead_key(record) or ""
        result = step(states.get(key), key, schema, record, rules, workload.now_ms)
        states[key] = result.state
        for output in result.outputs:
            found.append((output.schema, output.record))
            domain = output.record.get("account_domain") if output.schema == "lead_score" else None
            if domain:
                account = fold_lead_score(accounts.get(domain), output.record)
                accounts[domain] = account
                if account is not None:
                    found.append(("account_score", account_score_record(account, workload.now_ms)))
    return found


def test_every_output_schema_is_compiled() -> None:
    assert all(CODEC.compiled(name) for name in OUTPUTS)


def test_real_outputs_take_the_fast_path_and_encode_to_the_registrys_bytes() -> None:
    outputs = _core_outputs(4000)
    kinds = Counter(schema for schema, _ in outputs)
    assert {"lead_score", "stage_transition", "hot_lead"} <= set(kinds), kinds
    for schema, record in outputs:
        fast = CODEC.fast_encode(schema, record)
        assert fast is not None, (schema, record)  # the usual record is never handed to fastavro
        assert fast == REGISTRY.encode(schema, record), (schema, record)
        assert REGISTRY.decode(fast) == (schema, record)


def _signal() -> st.SearchStrategy[dict[str, Any]]:
    text = st.text(max_size=30)
    number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70))
    return st.fixed_dictionaries(
        {
            "rule": text,
            "event_type": text,
            "event_id": text,
            "event_time": st.integers(-(2**64), 2**64),
            "points": number,
            "current_points": number,
            "detail": st.one_of(st.none(), text),
        }
    )


@st.composite
def _lead_score(draw: st.DrawFn) -> dict[str, Any]:
    number = st.one_of(st.floats(), st.integers(-(2**64), 2**64), st.none(), st.text(max_size=3))
    record: dict[str, Any] = {
        "lead_id": draw(st.one_of(st.text(max_size=40), st.none())),
        "score": draw(number),
        "fit": draw(st.floats()),
        "behaviour": draw(st.floats()),
        "previous_score": draw(st.floats()),
        "band": draw(st.sampled_from(["cold", "warm", "hot"])),
        "stage": draw(st.text(max_size=12)),
        "as_of": draw(st.integers(-(2**64), 2**64)),
        "trigger_event_id": draw(st.text(max_size=20)),
        "computed_at": draw(st.integers(0, 2**45)),
        "account_domain": draw(st.one_of(st.none(), st.text(max_size=20))),
        "account_score": draw(st.one_of(st.none(), st.floats())),
        "reasons": draw(st.lists(_signal(), max_size=4)),
        "change_reason": draw(st.text(max_size=40)),
    }
    for name in draw(st.lists(st.sampled_from(sorted(record)), max_size=2)):
        record.pop(name, None)  # a missing field: fastavro's default or its error decides
    return record


def _outcome(encode: Any, record: dict[str, Any]) -> bytes | str:
    try:
        return bytes(encode("lead_score", record))
    except (SchemaError, ValueError, TypeError, OverflowError) as exc:
        return type(exc).__name__


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_lead_score())
def test_generated_lead_scores_encode_exactly_as_the_registry_does(record: dict[str, Any]) -> None:
    assert _outcome(CODEC.encode, record) == _outcome(REGISTRY.encode, record), record


def test_every_schema_but_the_dead_letter_has_a_compiled_decoder() -> None:
    # dead_letter carries bytes, which the decoder does not handle: fastavro decodes those
    compiled = {name for name in REGISTRY.current if CODEC.compiled_decoder(name)}
    assert compiled == set(REGISTRY.current) - {"dead_letter"}


def test_inputs_and_outputs_decode_to_the_registrys_records() -> None:
    workload = Workload(seed=11, expected_events=3000)
    encoded = [REGISTRY.encode(s, r) for s, r in workload.take(3000)]
    encoded += [REGISTRY.encode(s, r) for s, r in _core_outputs(1500)]
    for data in encoded:
        expected = REGISTRY.decode(data)
        assert CODEC.decode(data) == expected
        assert CODEC.decode(data, expect=expected[0]) == expected


def test_the_account_hop_head_holds_what_the_account_fold_reads() -> None:
    """The worker decodes account hops only up to ``ACCOUNT_HOP_LAST``: every field the fold reads is there,
    and folding the head gives the same account as folding the whole record."""
    scores = [r for s, r in _core_outputs(1500) if s == "lead_score" and r["account_domain"]]
    assert len(scores) > 100
    accounts: dict[str, AccountState | None] = {}
    from_heads: dict[str, AccountState | None] = {}
    for record in scores:
        data = REGISTRY.encode("lead_score", record)
        full = REGISTRY.decode(data)[1]
        schema, head = CODEC.decode_head(data, "lead_score", ACCOUNT_HOP_LAST)
        assert schema == "lead_score" and "reasons" not in head
        assert {f: head[f] for f in HOP_FIELDS} == {f: full[f] for f in HOP_FIELDS}
        domain = record["account_domain"]
        accounts[domain] = fold_lead_score(accounts.get(domain), full)
        from_heads[domain] = fold_lead_score(from_heads.get(domain), head)
    assert from_heads == accounts
    with pytest.raises(SchemaError):  # another schema's bytes: the registry's answer
        visit = REGISTRY.encode(*Workload(seed=1, expected_events=1).take(1)[0])
        CODEC.decode_head(visit, "lead_score", "as_of")


@pytest.mark.parametrize("tail", [b"\x00", b"\x02xy", bytes(40)], ids=["1", "3", "40"])
def test_trailing_bytes_are_refused_by_the_compiled_decoder_with_the_registrys_error(tail: bytes) -> None:
    """Bytes after a whole record: the writer's schema is not the one its fingerprint names. The compiled
    decoder does not vouch for them, so the registry's refusal (and its wording) is the answer."""
    samples = [REGISTRY.encode(s, r) for s, r in Workload(seed=5, expected_events=200).take(200)]
    samples += [REGISTRY.encode(s, r) for s, r in _core_outputs(300)]
    assert {REGISTRY.writer_of(data).name for data in samples} >= {"web_visit", "download", "lead_score"}
    for data in samples:
        name = REGISTRY.writer_of(data).name
        assert CODEC.compiled_decoder(name)
        with pytest.raises(TrailingBytes) as compiled:
            CODEC.decode(data + tail)
        with pytest.raises(TrailingBytes) as registry:
            REGISTRY.decode(data + tail)
        assert str(compiled.value) == str(registry.value)
        assert str(compiled.value).startswith(f"{len(tail)} trailing byte")
        with pytest.raises(TrailingBytes):
            CODEC.decode(data + tail, expect=name)


def test_the_compiled_reader_itself_refuses_a_record_that_ends_before_the_bytes_do() -> None:
    """Not only the registry behind it: ``decode_body`` raises, except for a head read (``whole=False``)."""
    data = REGISTRY.encode(*Workload(seed=1, expected_events=1).take(1)[0])
    reader = compile_reader(REGISTRY.writer_of(data).raw)
    assert reader is not None
    assert decode_body(reader, data, HEADER_LEN) == REGISTRY.decode(data)[1]
    with pytest.raises(Undecidable):
        decode_body(reader, data + b"\x00", HEADER_LEN)
    assert decode_body(reader, data + b"\x00", HEADER_LEN, whole=False) == REGISTRY.decode(data)[1]


def test_the_account_hop_head_does_not_read_to_the_end_so_it_cannot_see_trailing_bytes() -> None:
    """By design (``decode_head``): only for lead scores the worker itself wrote."""
    record = next(r for s, r in _core_outputs(300) if s == "lead_score")
    data = REGISTRY.encode("lead_score", record) + b"\x00"
    assert CODEC.decode_head(data, "lead_score", ACCOUNT_HOP_LAST)[1]["lead_id"] == record["lead_id"]
    with pytest.raises(TrailingBytes):
        CODEC.decode(data)


def _decoded(decode: Any, data: bytes, expect: str | None) -> tuple[str, dict[str, Any]] | str:
    try:
        return decode(data, expect)  # type: ignore[no-any-return]
    except SchemaError as exc:
        return type(exc).__name__


_SAMPLES = [REGISTRY.encode(s, r) for s, r in Workload(seed=3, expected_events=60).take(60)]
_SAMPLES += [REGISTRY.encode(s, r) for s, r in _core_outputs(300)[:40]]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_SAMPLES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    st.integers(0, 10_000),
    st.sampled_from([None, "web_visit", "lead_score"]),
)
def test_corrupted_bytes_decode_or_fail_exactly_as_the_registry_does(
    data: bytes, flips: list[tuple[int, int]], cut: int, expect: str | None
) -> None:
    body = bytearray(data)
    for position, value in flips:  # the header stays: corrupt bodies under a known fingerprint
        body[10 + position % max(1, len(body) - 10)] = value
    corrupted = bytes(body[: max(10, len(body) - cut % 40)])
    assert _decoded(CODEC.decode, corrupted, expect) == _decoded(REGISTRY.decode, corrupted, expect)
