"""Avro Single Object Encoding, schema resolution and JSON validation (DESIGN §6)."""

from __future__ import annotations

import io
import json
import struct

import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas.domain_rules import MAX_DWELL_MS
from schemas.errors import SchemaValidationError, TrailingBytes, UnknownFingerprint, WireFormatError
from schemas.fast_codec import codec_for
from schemas.registry import SCHEMA_DIR, SchemaRegistry, crc64_avro, default_registry, to_millis

pytestmark = pytest.mark.unit

# (canonical form, signed 64-bit fingerprint) from the Avro project's share/test/data/schema-tests.txt,
# which the Java reference implementation cross-checks.
SPEC_VECTORS = [
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('"string"', -8142146995180207161),
    ('{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
    ('{"name":"x.y.foo","type":"record","fields":[]}', 5916914534497305771),
    ('{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}', 7843277075252814651),
    ('{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}', -4448647247586288245),
    ('{"type":"map","values":"string"}', -8732877298790414990),
]


def _independent_crc64(data: bytes) -> int:
    """A second, bit-by-bit implementation of CRC-64-AVRO (no lookup table), written from the spec."""
    poly = 0xC15D213AA4D7A795
    fp = poly
    for byte in data:
        fp ^= byte
        for _ in range(8):
            fp = (fp >> 1) ^ (poly if fp & 1 else 0)
    return fp


def _minimal_web_visit(**over: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": "ev-1",
        "event_time": 1_790_000_000_000,
        "anonymous_id": "anon-1",
        "source": "test",
        "url": "https://example.com/pricing",
        "page_category": "pricing",
    }
    event.update(over)
    return event


@pytest.mark.parametrize(("canonical", "expected"), SPEC_VECTORS)
def test_crc64_matches_the_avro_spec_test_vectors(canonical: str, expected: int) -> None:
    assert crc64_avro(canonical.encode()) == expected & 0xFFFFFFFFFFFFFFFF


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("**/*.avsc")), ids=lambda p: p.name)
def test_header_is_c301_plus_little_endian_fingerprint_per_independent_implementations(path) -> None:
    registry = default_registry()
    raw = json.loads(path.read_text())
    canonical = to_parsing_canonical_form(raw).encode()
    independent = _independent_crc64(canonical)
    version = registry.by_fingerprint[independent]
    assert version.header == b"\xc3\x01" + struct.pack("<Q", independent)
    # fastavro's own CRC-64-AVRO returns the 8 little-endian bytes as hex
    assert version.header[2:].hex() == fastavro_fingerprint(canonical.decode(), "CRC-64-AVRO")


def test_encoded_bytes_decode_with_fastavro_schemaless_reader() -> None:
    registry = default_registry()
    event = registry.validate("web_visit", _minimal_web_visit())
    data = registry.encode("web_visit", event)
    raw = json.loads((SCHEMA_DIR / "web_visit.avsc").read_text())
    assert data[:2] == b"\xc3\x01"
    assert struct.unpack("<Q", data[2:10])[0] == _independent_crc64(to_parsing_canonical_form(raw).encode())
    decoded = fastavro.schemaless_reader(io.BytesIO(data[10:]), fastavro.parse_schema(raw))
    assert decoded["event_id"] == "ev-1"
    assert decoded["url"] == "https://example.com/pricing"
    assert int(decoded["event_time"].timestamp() * 1000) == 1_790_000_000_000


@pytest.mark.parametrize("name", default_registry().names)
def test_every_schema_documents_every_field(name: str) -> None:
    raw = default_registry().schema(name).raw
    assert raw.get("doc")
    missing = [f["name"] for f in raw["fields"] if not f.get("doc")]
    assert missing == []


def test_round_trip_preserves_every_field() -> None:
    registry = default_registry()
    event = registry.validate("web_visit", _minimal_web_visit(utm_source="newsletter", referrer="https://a"))
    name, decoded = registry.decode(registry.encode("web_visit", event))
    assert name == "web_visit"
    assert decoded == event


def _older_writer(history: str, record: dict[str, object]) -> bytes:
    """``record`` as a producer on the old schema ``history`` (a file of schemas/history) writes it: its own
    fingerprint (computed independently of the registry) and body."""
    old = json.loads((SCHEMA_DIR / "history" / history).read_text())
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + struct.pack("<Q", _independent_crc64(to_parsing_canonical_form(old).encode())))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old), record)
    return buf.getvalue()


def test_older_writer_version_resolves_to_current_reader_with_defaults() -> None:
    registry = default_registry()
    written = _older_writer(
        "web_visit.v1.avsc",
        {
            "event_id": "old-1",
            "event_time": 1_700_000_000_000,
            "anonymous_id": None,
            "lead_id": "L1",
            "source": "v1",
            "url": "https://x",
            "page_category": None,
            "referrer": None,
        },
    )
    name, record = registry.decode(written)
    assert name == "web_visit"
    assert record["lead_id"] == "L1"
    assert record["utm_source"] is None and record["received_at"] is None


PAGE_VIEWLESS = {  # the versions before page_view_id (stop 33), each with a record of its fields
    "content_view.v1.avsc": {
        "content_id": "cs-1",
        "content_type": "case_study",
        "dwell_ms": 1_000,
        "percent_viewed": 50.0,
        "channel": "web",
    },
    "web_visit.v2.avsc": {"url": "https://x", "page_category": None, "referrer": None},
}


@pytest.mark.parametrize("history", sorted(PAGE_VIEWLESS))
def test_a_record_written_before_page_view_id_reads_as_a_view_of_its_own(history: str) -> None:
    """Producers built on the schema DESIGN §6 lists (no page_view_id) keep working: their records resolve
    to the current schema with page_view_id null, on the registry's path and the worker's codec alike."""
    registry = default_registry()
    old = json.loads((SCHEMA_DIR / "history" / history).read_text())
    name = history.split(".")[0]
    assert "page_view_id" not in {f["name"] for f in old["fields"]}
    assert "page_view_id" in {f["name"] for f in registry.schema(name).raw["fields"]}
    common = {"event_id": "old-1", "event_time": 1_700_000_000_000, "anonymous_id": None, "lead_id": "L1"}
    written = {**common, "source": "v", "received_at": None, **PAGE_VIEWLESS[history]}
    data = _older_writer(history, written)
    for decode in (registry.decode, codec_for(registry).decode):
        decoded_as, record = decode(data)
        assert decoded_as == name
        assert record["page_view_id"] is None
        assert {k: record[k] for k in written} == written


def test_unknown_fingerprint_is_a_typed_error_naming_the_fingerprint() -> None:
    data = b"\xc3\x01" + struct.pack("<Q", 0x1234) + b"\x00"
    with pytest.raises(UnknownFingerprint, match="0x0000000000001234") as info:
        default_registry().decode(data)
    assert info.value.fingerprint == 0x1234


@pytest.mark.parametrize("data", [b"", b"{}", b"\xc3\x02" + bytes(8), b"\xc3\x01\x00"])
def test_bytes_without_soe_header_are_a_wire_format_error(data: bytes) -> None:
    with pytest.raises(WireFormatError):
        default_registry().decode(data)


def test_truncated_body_is_a_wire_format_error_not_a_crash() -> None:
    registry = default_registry()
    data = registry.encode("web_visit", registry.validate("web_visit", _minimal_web_visit()))
    with pytest.raises(WireFormatError, match="corrupt web_visit body"):
        registry.decode(data[:15])


def test_a_body_written_with_more_fields_than_its_fingerprint_names_is_refused_not_truncated() -> None:
    """A producer that added a field to web_visit but kept the old fingerprint: fastavro reads the known
    fields and stops, so the record would be scored as if the bytes after it were not there."""
    registry = default_registry()
    current = registry.schema("web_visit")
    extended = {**current.raw, "fields": [*current.raw["fields"], {"name": "campaign", "type": "string"}]}
    event = registry.validate("web_visit", _minimal_web_visit())
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(extended), {**event, "campaign": "spring"})
    data = current.header + buf.getvalue()
    size = len(registry.encode("web_visit", event))
    with pytest.raises(TrailingBytes) as info:
        registry.decode(data)
    assert isinstance(info.value, WireFormatError)  # dead-lettered like any bytes that do not decode
    assert str(info.value).startswith(
        f"7 trailing bytes after the web_visit record (it ends at byte {size} of {size + 7}): "
        "the writer's schema does not match its fingerprint"
    )


def test_trailing_bytes_after_an_older_writer_versions_record_are_refused_too() -> None:
    """The resolving read (writer schema != reader schema) stops at the record's end as well."""
    registry = default_registry()
    record = {"event_id": "old-1", "event_time": 1, "anonymous_id": None, "lead_id": "L1", "source": "v1"}
    data = _older_writer(
        "web_visit.v1.avsc", {**record, "url": "https://x", "page_category": None, "referrer": None}
    )
    assert registry.decode(data)[1]["lead_id"] == "L1"
    with pytest.raises(TrailingBytes, match=r"^1 trailing byte after the web_visit record"):
        registry.decode(data + b"\x00")


def test_validation_names_every_bad_field() -> None:
    bad = _minimal_web_visit(event_id=7, event_time="yesterday", bogus=1)
    del bad["url"]
    with pytest.raises(SchemaValidationError) as info:
        default_registry().validate("web_visit", bad)
    fields = {e.field: e.problem for e in info.value.errors}
    assert set(fields) == {"event_id", "event_time", "url", "bogus"}
    assert "expected string" in fields["event_id"]
    assert "required" in fields["url"]
    assert "unknown field" in fields["bogus"]


def test_a_key_that_is_not_a_string_is_an_unknown_field_not_a_type_error() -> None:
    """An SDK caller's dict may have other keys than strings (a DataFrame row with numbered columns): the
    unknown-field message concatenated and sorted them with the names, raising TypeError for the event."""
    with pytest.raises(SchemaValidationError) as info:
        default_registry().validate("web_visit", {**_minimal_web_visit(), 1: "x", "bogus": 2, None: 3})
    assert [e.field for e in info.value.errors] == ["1", "None", "bogus"]
    assert all("unknown field" in e.problem for e in info.value.errors)


def test_validation_requires_a_lead_or_anonymous_identity() -> None:
    with pytest.raises(SchemaValidationError, match="lead_id: one of lead_id or anonymous_id"):
        default_registry().validate("web_visit", _minimal_web_visit(anonymous_id=None))


@pytest.mark.parametrize("lead_id", ["", "   "])
def test_a_required_lead_id_must_not_be_empty(lead_id: str) -> None:
    """lead_identified and sales_activity require a lead_id; an empty one passed validation (the collector
    answered 202, the worker then dead-lettered the sales activity as having no identity)."""
    registry = default_registry()
    activity = {"event_id": "s", "event_time": 1, "lead_id": lead_id, "source": "crm", "activity": "accepted"}
    profile = {"event_id": "p", "event_time": 1, "lead_id": lead_id, "anonymous_id": "a-1", "source": "web"}
    for name, record in (("sales_activity", activity), ("lead_identified", profile)):
        with pytest.raises(SchemaValidationError) as info:
            registry.validate(name, record)
        assert [(e.field, e.problem) for e in info.value.errors] == [("lead_id", "must not be empty")], name
        assert registry.validate(name, {**record, "lead_id": "L-1"})["lead_id"] == "L-1"


def test_validation_accepts_iso_timestamps_and_rejects_bad_enum_values() -> None:
    registry = default_registry()
    record = registry.validate(
        "sales_activity",
        {
            "event_id": "s1",
            "event_time": "2026-11-01T09:00:00+09:00",
            "lead_id": "L1",
            "source": "crm",
            "activity": "accepted",
        },
    )
    assert record["event_time"] == 1_793_491_200_000  # 2026-11-01T00:00:00Z
    with pytest.raises(SchemaValidationError, match="activity: must be one of"):
        registry.validate("sales_activity", {**record, "activity": "called"})


@pytest.mark.parametrize(
    ("iso", "millis"),
    [
        ("2004-10-17T14:33:43.383Z", 1_098_023_623_383),
        ("2004-10-17T14:33:43.383000+00:00", 1_098_023_623_383),
        ("2004-10-17T16:33:43.383999+02:00", 1_098_023_623_383),  # microseconds are cut, not rounded
        ("2026-11-30T06:00:00.001Z", 1_796_018_400_001),
    ],
)
def test_an_iso_timestamp_keeps_its_milliseconds_exactly(iso: str, millis: int) -> None:
    """to_millis multiplied the float seconds of datetime.timestamp() by 1000 and truncated: about 1.5% of
    millisecond times came out a millisecond early (…43.383 as …43.382), in the collector, the SDK and
    produce alike (their sent_at too)."""
    assert to_millis(iso) == millis


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (1_764_403_200_123.456, "must be whole epoch milliseconds, got 1764403200123.456"),
        (float("nan"), "must be whole epoch milliseconds, got nan"),
    ],
)
def test_a_fractional_millisecond_time_is_named_as_such(value: float, problem: str) -> None:
    """performance.timeOrigin + performance.now() is epoch milliseconds with a fraction: it was refused as
    "expected epoch milliseconds or an ISO-8601 string, got float", which is what the client had sent."""
    with pytest.raises(ValueError) as info:
        to_millis(value)
    assert str(info.value) == problem


def test_content_view_ranges_are_checked() -> None:
    with pytest.raises(SchemaValidationError) as info:
        default_registry().validate(
            "content_view",
            {
                "event_id": "c1",
                "event_time": 1,
                "lead_id": "L1",
                "source": "t",
                "content_id": "wp-1",
                "content_type": "whitepaper",
                "dwell_ms": -5,
                "percent_viewed": 120,
            },
        )
    assert {e.field for e in info.value.errors} == {"dwell_ms", "percent_viewed"}


CONTENT_VIEW = {
    "event_id": "c1",
    "event_time": 1_793_491_200_000,
    "lead_id": "L1",
    "source": "t",
    "content_id": "wp-1",
    "content_type": "whitepaper",
    "dwell_ms": 5,
    "percent_viewed": 50,
}


def test_a_dwell_beyond_a_day_is_refused_naming_the_field() -> None:
    """The daily views sum dwell as Int64: two views of 2**62 ms sent with the public key wrapped a content
    item's dwell negative in the reports (ingestion review). A day of visibility is the most one view
    reports; the SDK, ``produce`` and the collector share this check."""
    registry = default_registry()
    registry.validate("content_view", {**CONTENT_VIEW, "dwell_ms": MAX_DWELL_MS})
    for dwell in (MAX_DWELL_MS + 1, 2**62):
        with pytest.raises(SchemaValidationError) as info:
            registry.validate("content_view", {**CONTENT_VIEW, "dwell_ms": dwell})
        assert [(e.field, e.problem) for e in info.value.errors] == [
            ("dwell_ms", f"must be at most 86400000 (24 hours), got {dwell}")
        ]


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("dwell_ms", 10**25, "out of range for long: 100000000000…(26 digits)"),
        ("dwell_ms", -(2**63) - 1, "out of range for long"),
        ("event_time", -(10**25), "out of range for a timestamp in epoch milliseconds"),
        ("event_time", 1e300, "out of range for a timestamp in epoch milliseconds"),
        ("percent_viewed", float("nan"), "must be a finite number, got nan"),
        ("percent_viewed", 10**400, "out of range for double"),
    ],
)
def test_numbers_avro_cannot_hold_are_field_errors_not_encoder_crashes(
    field: str, value: object, problem: str
) -> None:
    """Found by a security audit: a long beyond int64 passed validation and fastavro's encoder raised
    OverflowError, a 500 from the collector for the whole batch; NaN amounts were stored as nan."""
    with pytest.raises(SchemaValidationError) as info:
        default_registry().validate("content_view", {**CONTENT_VIEW, field: value})
    assert [(e.field, problem in e.problem) for e in info.value.errors] == [(field, True)]
    default_registry().validate("content_view", {**CONTENT_VIEW, field: CONTENT_VIEW[field]})  # in range


@pytest.mark.parametrize(
    ("field", "sign", "problem"),
    [
        ("dwell_ms", 1, "out of range for long: a number of 5001 digits"),
        ("event_time", -1, "out of range for a timestamp in epoch milliseconds: a number of 5001 digits"),
        ("percent_viewed", 1, "out of range for double: a number of 5001 digits"),
    ],
)
def test_a_number_beyond_pythons_digit_limit_is_a_field_error_too(
    field: str, sign: int, problem: str
) -> None:
    """Beyond Python's int_max_str_digits (4300) the error message's str() of the number raised ValueError:
    an SDK caller got "Exceeds the limit (4300 digits) for integer string conversion", no field named."""
    with pytest.raises(SchemaValidationError) as info:
        default_registry().validate("content_view", {**CONTENT_VIEW, field: sign * 10**5000})
    assert [(e.field, e.problem) for e in info.value.errors] == [(field, problem)]


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("content_id", 10**5000, "expected string, got int a number of 5001 digits"),
        ("channel", [1, -(10**5000)], "expected string, got list holding a number too long to show"),
    ],
    ids=["int", "list-holding-one"],  # pytest's own ids would str() the numbers
)
def test_a_number_beyond_pythons_digit_limit_where_another_type_is_expected_is_a_field_error(
    field: str, value: object, problem: str
) -> None:
    """The type mismatch's message took repr() of the value, which raises ValueError past 4300 digits: the
    SDK's send() raised "Exceeds the limit (4300 digits) for integer string conversion", no field named."""
    with pytest.raises(SchemaValidationError) as info:
        default_registry().validate("content_view", {**CONTENT_VIEW, field: value})
    assert [e.field for e in info.value.errors] == [field]
    assert problem in info.value.errors[0].problem


def test_a_non_finite_sales_amount_is_refused() -> None:
    record = {"event_id": "s", "event_time": 1, "lead_id": "L", "source": "crm", "activity": "closed_won"}
    with pytest.raises(SchemaValidationError, match="amount: must be a finite number, got inf"):
        default_registry().validate("sales_activity", {**record, "amount": float("inf")})
    assert default_registry().validate("sales_activity", {**record, "amount": 1200.5})["amount"] == 1200.5


def test_a_lone_surrogate_is_a_field_error_when_validating_and_encoding() -> None:
    """json.loads('"\\ud800"') is a str UTF-8 cannot encode: validation said nothing and the encoder's
    error named "<record>" (the SDK, `leadpulse produce`) or escaped as a 500 (the collector)."""
    registry = default_registry()
    record = {**CONTENT_VIEW, "content_type": "case\ud800study"}
    with pytest.raises(SchemaValidationError) as info:
        registry.validate("content_view", record)
    assert [e.field for e in info.value.errors] == ["content_type"]
    with pytest.raises(SchemaValidationError) as info:
        registry.encode("content_view", {**registry.validate("content_view", CONTENT_VIEW), **record})
    assert [e.field for e in info.value.errors] == ["content_type"]
    accepted = registry.validate("content_view", {**CONTENT_VIEW, "content_type": "étude 👀"})
    assert accepted["content_type"] == "étude 👀"  # a dict is always truthy: check the value kept


def test_nested_records_report_their_path() -> None:
    registry = default_registry()
    with pytest.raises(SchemaValidationError, match=r"reasons\[0\]\.points: expected double"):
        registry.validate(
            "lead_score",
            {
                "lead_id": "L1",
                "score": 1.0,
                "fit": 0.0,
                "behaviour": 1.0,
                "previous_score": 0.0,
                "band": "cold",
                "stage": "lead",
                "as_of": 1,
                "trigger_event_id": "e",
                "computed_at": 1,
                "change_reason": "x",
                "reasons": [
                    {
                        "rule": "r",
                        "event_type": "web_visit",
                        "event_id": "e",
                        "event_time": 1,
                        "points": "many",
                        "current_points": 1.0,
                    }
                ],
            },
        )


def test_registry_loads_history_versions_for_decoding_only(tmp_path) -> None:
    registry = SchemaRegistry()
    history = list((SCHEMA_DIR / "history").glob("*.avsc"))
    assert len(registry.by_fingerprint) == len(registry.current) + len(history)
    assert {v.name for v in registry.by_fingerprint.values()} == set(
        registry.current
    )  # old versions: same names
    assert set(registry.current) == {p.stem for p in SCHEMA_DIR.glob("*.avsc")}


def test_a_blank_identity_of_a_behavioural_event_is_refused_naming_the_field() -> None:
    """A whitespace-only lead_id or anonymous_id passed and keyed the event (and a lead) by blanks."""
    registry = default_registry()
    for field in ("lead_id", "anonymous_id"):
        with pytest.raises(SchemaValidationError) as info:
            registry.validate("web_visit", _minimal_web_visit(**{field: "  "}))
        assert (field, "must not be blank (whitespace only)") in [
            (e.field, e.problem) for e in info.value.errors
        ]
    # an empty nullable id is simply absent when the other one is there
    assert registry.validate("web_visit", _minimal_web_visit(lead_id=""))["anonymous_id"]


def test_the_registrys_public_names_stay_importable_from_it_after_the_split() -> None:
    """Coercion, domain rules and errors moved to their own modules; code outside this repository imports
    these names from ``schemas.registry``, so each is still there and is the one object of its home."""
    import schemas.coercion
    import schemas.domain_rules
    import schemas.errors
    import schemas.registry

    before_the_split = {
        "BEHAVIOURAL", "HEADER_LEN", "IDENTITY_FIELDS", "MAX_ID_CHARS", "SCHEMA_DIR", "SOE_MAGIC",
        "FieldError", "SchemaError", "SchemaRegistry", "SchemaValidationError", "SchemaVersion",
        "UnknownFingerprint", "UnknownSchema", "WireFormatError", "crc64_avro", "default_registry",
        "identity_problem", "identity_problems", "schema_fingerprint", "to_millis", "validation_errors",
    }  # fmt: skip
    assert before_the_split | {"TrailingBytes"} == set(schemas.registry.__all__)
    for home in (schemas.coercion, schemas.domain_rules, schemas.errors):
        for name in set(schemas.registry.__all__) & set(vars(home)):
            assert getattr(schemas.registry, name) is getattr(home, name), name
