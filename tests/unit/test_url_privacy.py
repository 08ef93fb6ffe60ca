"""Emails inside URL and utm fields reach ClickHouse only as ``email-hash:<keyed hash>`` tokens (DESIGN §10),
joinable with the ``email_hash`` columns, and everything else of the value stays byte-identical."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from schemas.registry import default_registry
from sinks.rows import Origin, email_hash, to_row
from sinks.url_privacy import (
    _FILE_EXTENSIONS,
    SCRUBBED_FIELDS,
    TOKEN_PREFIX,
    raw_might_hold_email,
    scrub_event,
    scrub_signals,
    scrub_text,
)
from streams.samples import sample_events

pytestmark = pytest.mark.unit

KEY = b"a-test-key-of-some-length"
JANE = TOKEN_PREFIX + str(email_hash("jane@acme.com", KEY))


def token(email: str) -> str:
    return TOKEN_PREFIX + str(email_hash(email, KEY))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("jane@acme.com", JANE),
        ("https://x.example/p?email=jane@acme.com&utm_source=mail", f"https://x.example/p?email={JANE}&utm_source=mail"),
        ("https://x.example/p?e=jane%40acme.com", f"https://x.example/p?e={JANE}"),
        ("https://x.example/p?e=Jane%40ACME.com#top", f"https://x.example/p?e={JANE}#top"),
        ("https://x.example/u/jane@acme.com/profile", f"https://x.example/u/{JANE}/profile"),
        ("mailto:jane@acme.com?subject=Hi", f"mailto:{JANE}?subject=Hi"),
        ("https://x.example/?e=jane.doe+news@acme.co.uk", f"https://x.example/?e={token('jane.doe+news@acme.co.uk')}"),
        ("https://x.example/?e=jane.doe%2Bnews%40acme.co.uk", f"https://x.example/?e={token('jane.doe+news@acme.co.uk')}"),
        # A link inside a redirect parameter: the address is encoded twice; the escapes around it are kept.
        (
            "https://r.example/?to=https%3A%2F%2Fs.example%2F%3Femail%3Djane%2540acme.com%26a%3D1",
            f"https://r.example/?to=https%3A%2F%2Fs.example%2F%3Femail%3D{JANE}%26a%3D1",
        ),
        ("x%3Djane%40acme.com", f"x%3D{JANE}"),  # not "x%" + the token of "3Djane@acme.com"
        ("to=s%252F%253Fe%253Djane%2540acme.com%2526x", f"to=s%252F%253Fe%253D{JANE}%2526x"),
        ("https://x.example/?e=jane%2Edoe%40acme.com", f"https://x.example/?e={token('jane.doe@acme.com')}"),
        ("https://x.example/?e=jos%C3%A9%40acme.com&z=1", f"https://x.example/?e={token('josé@acme.com')}&z=1"),
        ("https://x.example/?e=José@bücher.example", f"https://x.example/?e={token('josé@bücher.example')}"),
    ],
)  # fmt: skip
def test_addresses_plain_encoded_or_in_a_path_become_the_token(value: str, expected: str) -> None:
    assert scrub_text(value, KEY) == expected


def test_several_addresses_in_one_value_each_become_their_own_token() -> None:
    value = "https://x.example/fwd?from=jane@acme.com&to=bob%40corp.example&cc=Jane@Acme.com"
    assert (
        scrub_text(value, KEY)
        == f"https://x.example/fwd?from={JANE}&to={token('bob@corp.example')}&cc={JANE}"
    )


def test_a_pipe_delimits_an_address_so_its_token_joins_the_lead() -> None:
    """Outlook Safe Links carry the recipient in ``data=05%7C01%7Cjane%40acme.com%7C…`` ('|'-separated):
    with '|' read as part of the address (RFC 5322 allows it; no mail provider does) the token was the hash
    of ``05|01|jane@acme.com``, which joins no lead's ``email_hash``."""
    safe_link = (
        "https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fwww.acme.com%2Fpricing"
        "&data=05%7C01%7Cjane%40acme.com%7C1b2c%7C0%7C638&sdata=x&reserved=0"
    )
    assert scrub_text(safe_link, KEY) == safe_link.replace("jane%40acme.com", JANE)
    listed = "https://x.example/?to=bob@corp.example|Jane@Acme.com"
    assert scrub_text(listed, KEY) == f"https://x.example/?to={token('bob@corp.example')}|{JANE}"


@pytest.mark.parametrize(
    "value",
    [
        "https://x.example/?state=%7B%22email%22%3A%22jane%40acme.com%22%7D",  # JSON in a query value
        "https://r.example/?to=https%3A%2F%2Fs.example%2F%3Fs%3D%257B%2522e%2522%253A%2522jane%2540acme.com",
    ],
)
def test_an_encoded_double_quote_is_no_part_of_the_address(value: str) -> None:
    """``%22`` is '"', which an address holds only inside a quoted local part: read as one of its characters,
    JSON in a URL (``{"email":"jane@acme.com"}`` encoded) gave the token of ``"jane@acme.com``, which joins
    no lead."""
    assert JANE in scrub_text(value, KEY)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://x.example/?q='jane@acme.com'", f"https://x.example/?q='{JANE}'"),
        ("https://x.example/?q=%27jane%40acme.com%27", f"https://x.example/?q=%27{JANE}%27"),
        ("https://x.example/?q=*Jane@acme.com*", f"https://x.example/?q=*{JANE}*"),
        ("https://x.example/?q=%7Bjane%2540acme.com%7D", f"https://x.example/?q=%7B{JANE}%7D"),
        ("https://x.example/?q=o'brien@acme.com", "https://x.example/?q=" + token("o'brien@acme.com")),
        ("https://x.example/?q=_jane@acme.com", f"https://x.example/?q={token('_jane@acme.com')}"),
        # escaped Unicode quotes (“ ” « »): read in, the token was that of "“jane@acme.com"
        (
            "https://x.example/?q=%E2%80%9Cjane%40acme.com%E2%80%9D",
            f"https://x.example/?q=%E2%80%9C{JANE}%E2%80%9D",
        ),
        (
            "https://x.example/?q=%C2%AB%20jane%2540acme.com%C2%BB",
            f"https://x.example/?q=%C2%AB%20{JANE}%C2%BB",
        ),
    ],
)
def test_quotes_before_an_address_stay_outside_its_token(value: str, expected: str) -> None:
    """A local part starting with a special character (' * { ~ . and the others RFC 5322 allows) is, in a URL,
    an address quoted or marked up; read into it, the token joined no lead. Kept as they are in the URL."""
    assert scrub_text(value, KEY) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # what a browser's location.href holds for ?e=José@bücher.example: non-ASCII percent-encoded
        ("https://x.example/?e=Jos%C3%A9%40B%C3%BCcher.example&z=1", f"https://x.example/?e={token('josé@bücher.example')}&z=1"),
        ("https://x.example/?e=jane@b%C3%BCcher.example", f"https://x.example/?e={token('jane@bücher.example')}"),
        ("s%253Djane%2540b%25C3%25BCcher.example%2526x", f"s%253D{token('jane@bücher.example')}%2526x"),
    ],
)  # fmt: skip
def test_an_address_at_a_percent_encoded_non_ascii_domain_is_scrubbed(value: str, expected: str) -> None:
    """Browsers send non-ASCII in a URL percent-encoded: an address at ``bücher.example`` arrives as
    ``b%C3%BCcher.example``, which was no domain to the scrub, so the address was stored in clear."""
    assert scrub_text(value, KEY) == expected


def test_the_token_is_the_email_hash_column_value_and_a_valid_query_value() -> None:
    scrubbed = scrub_text("https://x.example/p?email=Jane%40Acme.com&b=1", KEY)
    parts = urlsplit(scrubbed)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "x.example", "/p")
    assert dict(p.split("=") for p in parts.query.split("&")) == {"email": JANE, "b": "1"}
    assert JANE.removeprefix(TOKEN_PREFIX) == email_hash("  jane@acme.com ", KEY)


@pytest.mark.parametrize(
    "value",
    [
        "https://x.example/pricing?utm_source=news&utm_campaign=q3%20launch#plans",
        "https://x.example/a%20b/%E2%9C%93?q=%2B1&x=40%",
        "https://user@host.example/",  # a user name at the URL's host: not an address, the host is kept
        "https://user:secret@host.example:8443/path?q=1",
        "bounce://jane",
        "@handle and a@b",  # no domain with a dot
        "",
    ],
)
def test_values_without_an_address_are_returned_byte_for_byte(value: str) -> None:
    assert scrub_text(value, KEY) == value


@pytest.mark.parametrize(
    "value",
    [
        "https://x.example/img/hero@2x.png",  # a retina image: "hero" at host "2x.png" read as an address
        "https://x.example/img/logo@3x.webp?w=200#top",
        "https://x.example/ebooks/guide@v2.pdf",  # a catalogue item: its clicks were lost to the report
        "https://x.example/downloads/Report@Final.PDF",
        "https://x.example/fonts/inter@1.woff2",
        "https://x.example/pages/pricing@2024.html?utm_source=mail",
    ],
)
def test_file_names_with_an_at_sign_are_not_addresses(value: str) -> None:
    """``name@host.ext`` where ``ext`` is a file extension and no top-level domain (png, pdf, html...): no
    one has an address there, and tokenising it broke the URL's path (the content report matches on it)."""
    assert scrub_text(value, KEY) == value
    assert scrub_event("email_click", {"link_url": value}, KEY) is None


@pytest.mark.parametrize(
    "value",
    [
        # Microsoft Teams meeting and channel links: "<id>@thread.v2" is a thread id, not an address
        "https://teams.microsoft.com/l/meetup-join/19%3ameeting_NGE5ZTk0YjAtZDQ4%40thread.v2/0?context=%7b%7d",
        "https://teams.microsoft.com/l/chat/19%3a8a2b@thread.tacv2/conversations",
        "https://x.example/releases/tool@build.x86/",
    ],
)
def test_a_domain_whose_last_label_has_a_digit_is_no_address(value: str) -> None:
    """Top-level domains are letters (or ``xn--`` IDNs): ``thread.v2`` is no domain, and tokenising it broke
    every meeting link a campaign sent (an email click's ``link_url``)."""
    assert scrub_text(value, KEY) == value


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("e=jane@acme.xn--p1ai&x=1", "jane@acme.xn--p1ai"),  # an IDN TLD (.рф as punycode)
        ("e=jane@acme.com_q3", "jane@acme.com"),  # what follows the TLD is not part of the address
        ("e=jane@acme.com-news", "jane@acme.com"),
    ],
)
def test_the_top_level_domain_ends_the_address(value: str, address: str) -> None:
    assert scrub_text(value, KEY) == value.replace(address, token(address))


def test_an_address_at_a_domain_named_like_a_file_is_still_scrubbed() -> None:
    """Top-level domains that are also file extensions (.zip, .mov, .md, .map) are still read as addresses,
    and so is a file extension anywhere but the last label."""
    for address in ("jane@acme.zip", "jane@acme.mov", "jane@acme.md", "jane@pdf.acme.com"):
        assert scrub_text(f"https://x.example/?e={address}", KEY) == f"https://x.example/?e={token(address)}"


def test_no_file_extension_left_alone_is_a_top_level_domain() -> None:
    """An address at a TLD in ``_FILE_EXTENSIONS`` would be stored in clear: checked against IANA's list
    (the copy hypothesis ships)."""
    import hypothesis

    listed = Path(hypothesis.__file__).parent / "vendor" / "tlds-alpha-by-domain.txt"
    tlds = {line.strip().lower() for line in listed.read_text().splitlines() if not line.startswith("#")}
    assert len(tlds) > 1000 and {"com", "zip", "mov", "md", "map"} <= tlds
    assert not _FILE_EXTENSIONS & tlds


def test_an_address_as_the_user_name_of_a_url_is_scrubbed_and_the_host_kept() -> None:
    scrubbed = scrub_text("https://jane%40acme.com:pw@host.example/p", KEY)
    assert scrubbed == f"https://{JANE}:pw@host.example/p"
    assert urlsplit(scrubbed).hostname == "host.example"


def test_a_long_run_of_address_characters_costs_linear_time_and_keeps_no_full_address() -> None:
    value = "a" * 100_000 + "@" + "b" * 100_000
    assert scrub_text(value, KEY) == value  # no domain with a dot: nothing to replace
    long_local = "x" * 100 + "@acme.com"
    assert "@" not in scrub_text(long_local, KEY)


def test_scrub_event_touches_only_url_and_utm_fields_and_returns_none_when_clean() -> None:
    visit: dict[str, Any] = {
        **next(sample_events("web_visit", 1)),
        "url": "https://x.example/p?e=jane%40acme.com",
        "referrer": "https://mail.example/?u=jane@acme.com",
        "utm_content": "jane@acme.com",
        "utm_term": "plain words",
        "lead_id": "jane@acme.com",  # an id is not a URL field: the worker and forget() key on it as sent
    }
    scrubbed = scrub_event("web_visit", visit, KEY)
    assert scrubbed is not None and scrubbed is not visit
    assert (scrubbed["url"], scrubbed["referrer"], scrubbed["utm_content"]) == (
        f"https://x.example/p?e={JANE}",
        f"https://mail.example/?u={JANE}",
        JANE,
    )
    assert {k: v for k, v in scrubbed.items() if k not in SCRUBBED_FIELDS["web_visit"]} == {
        k: v for k, v in visit.items() if k not in SCRUBBED_FIELDS["web_visit"]
    }
    assert visit["url"].endswith("jane%40acme.com")  # the caller's record is not changed
    assert scrub_event("web_visit", next(sample_events("web_visit", 1)), KEY) is None
    click = {**next(sample_events("email_click", 1)), "link_url": "https://x.example/l?e=jane@acme.com"}
    assert (scrub_event("email_click", click, KEY) or {})["link_url"] == f"https://x.example/l?e={JANE}"
    assert scrub_event("download", {"content_id": "jane@acme.com"}, KEY) is None


def test_the_encoded_record_test_finds_every_address_the_field_test_finds() -> None:
    registry = default_registry()
    for url in ("https://x.example/?e=jane@acme.com", "https://x.example/?e=jane%40acme.com", "j%2540a.com"):
        record = {**next(sample_events("web_visit", 1)), "url": url}
        assert raw_might_hold_email(registry.encode("web_visit", record)), url
    assert not raw_might_hold_email(registry.encode("web_visit", next(sample_events("web_visit", 1))))


def test_event_rows_hold_the_token_not_the_address() -> None:
    record = {**next(sample_events("web_visit", 1)), "url": "https://x.example/p?email=jane%40acme.com"}
    _spec, row = to_row("web_visit", record, Origin("t", 0, 1), KEY)
    assert f"https://x.example/p?email={JANE}" in row
    assert "jane" not in repr(row)


def _signal(detail: str | None) -> dict[str, Any]:
    return {"rule": "r", "event_type": "web_visit", "event_id": "e", "event_time": 1, "points": 1.0,
            "current_points": 1.0, "detail": detail}  # fmt: skip


def test_signal_details_in_score_and_hot_lead_rows_hold_the_token_not_the_address() -> None:
    """The worker copies the event's url (``campaign:link_url`` for a click) into each signal's detail."""
    signals = [
        _signal("https://x.example/p?e=jane@acme.com"),
        _signal("c1:https://x.example/l?e=jane%40acme.com"),
    ]
    assert [s["detail"] for s in scrub_signals(signals, KEY)] == [
        f"https://x.example/p?e={JANE}",
        f"c1:https://x.example/l?e={JANE}",
    ]
    clean = [_signal(None), _signal("pricing")]
    assert scrub_signals(clean, KEY) is clean
    score = {"lead_id": "L1", "score": 1.0, "fit": 0.0, "behaviour": 1.0, "previous_score": 0.0,
             "band": "cold", "stage": "lead", "as_of": 1, "trigger_event_id": "e", "computed_at": 1,
             "reasons": signals, "change_reason": "event"}  # fmt: skip
    hot = {"notification_id": "n", "lead_id": "L1", "score": 1.0, "fit": 0.0, "behaviour": 1.0, "reason": "r",
           "became_hot_at": 1, "signals": signals}  # fmt: skip
    for schema, record in (("lead_score", score), ("hot_lead", hot)):
        _spec, row = to_row(schema, record, Origin("t", 0, 1), KEY)
        stored = next(v for v in row if isinstance(v, str) and v.startswith("[{"))
        assert "jane" not in stored and json.loads(stored)[0]["detail"] == f"https://x.example/p?e={JANE}"


@pytest.mark.parametrize(
    "value",
    [
        "https://mastodon.social/@jane@acme.social",
        "https://mastodon.social/@user@instance.social/123",
        "https://x.example/share/@Jane.Doe@fosstodon.org/with_replies?lang=en#top",
    ],
)
def test_a_fediverse_handle_in_a_url_path_is_left_as_it_is(value: str) -> None:
    """``/@user@instance`` is a public Mastodon/fediverse handle, not a mailbox: tokenised, a profile link no
    longer matched its url."""
    assert scrub_text(value, KEY) == value


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("https://x.example/?ref=@jane@acme.com", "jane@acme.com"),  # a query value: hashed, in doubt
        ("https://x.example/p#/@jane@acme.com", "jane@acme.com"),  # a fragment
        ("https://r.example/?next=https://mastodon.social/@jane@acme.com", "jane@acme.com"),  # a nested URL
        ("https://x.example/u/@jane%40acme.com", "jane%40acme.com"),  # only a literal '@' makes a handle
        ("https://x.example/@jane+news@acme.com", "jane+news@acme.com"),  # no handle has a '+'
        ("https://x.example/@jane@acme.com.", "jane@acme.com"),  # the segment does not end at the host
    ],
)
def test_an_at_sign_before_an_address_outside_a_handle_in_a_path_is_hashed(value: str, address: str) -> None:
    assert scrub_text(value, KEY) == value.replace(address, token(unquote(address)))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://jane@acme.com:pw@evil.example/", f"https://{JANE}:pw@evil.example/"),
        ("https://jane@acme.com:@evil.example", f"https://{JANE}:@evil.example"),
        ("ftp://Jane@Acme.com:s3cret@files.example:21/a", f"ftp://{JANE}:s3cret@files.example:21/a"),
        ("https://jane@acme.com@evil.example/", f"https://{JANE}@evil.example/"),
        ("https://t.example/r?next=https://jane@acme.com:pw@evil.example/", f"https://t.example/r?next=https://{JANE}:pw@evil.example/"),
        ("https://t.example/r?next=https://jane@acme.com@evil.example/", f"https://t.example/r?next=https://{JANE}@evil.example/"),
        ("https://t.example/r?u=https%3A%2F%2Fjane%40acme.com%3Apw%40host%2F", f"https://t.example/r?u=https%3A%2F%2F{JANE}%3Apw%40host%2F"),
    ],
)  # fmt: skip
def test_an_address_in_a_user_name_before_a_password_is_scrubbed_and_the_host_kept(
    value: str, expected: str
) -> None:
    """In ``https://jane@acme.com:pw@evil.example/`` the host is after the *last* '@' of the authority, so
    ``jane@acme.com`` is the user name: it was read as "user jane at host acme.com, port ..." and stored in
    clear, while ``pw@evil.example`` became a token and the URL lost its host."""
    assert scrub_text(value, KEY) == expected
    assert urlsplit(expected).hostname == urlsplit(value).hostname


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://x.example/?e=jane%40acme.%E3%82%B3%E3%83%A0&z=1", f"https://x.example/?e={token('jane@acme.コム')}&z=1"),
        ("https://x.example/?e=Jane%40Acme.%D0%A0%D0%A4", f"https://x.example/?e={token('jane@acme.рф')}"),
        ("https://x.example/?e=jane%40acme.%d1%80%d1%84#x", f"https://x.example/?e={token('jane@acme.рф')}#x"),
        ("s%253Djane%2540acme.%25D1%2580%25D1%2584%2526x", f"s%253D{token('jane@acme.рф')}%2526x"),
        # a closing ” (escaped) after the address is no part of its top-level domain, nor is one after a dot
        ("q=%E2%80%9Cjane%40acme.%D1%80%D1%84%E2%80%9D", f"q=%E2%80%9C{token('jane@acme.рф')}%E2%80%9D"),
        ("q=jane%40acme.com.%E2%80%9D", f"q={JANE}.%E2%80%9D"),
        # scripts whose letters carry combining marks (ा is a vowel sign), plain or escaped
        ("e=jane@acme.भारत", f"e={token('jane@acme.भारत')}"),
        ("e=jane@उदाहरण.भारत/x", f"e={token('jane@उदाहरण.भारत')}/x"),
        ("e=jane%40acme.%E0%A4%AD%E0%A4%BE%E0%A4%B0%E0%A4%A4", f"e={token('jane@acme.भारत')}"),
    ],
)  # fmt: skip
def test_an_address_at_a_non_ascii_top_level_domain_is_scrubbed(value: str, expected: str) -> None:
    """``jane@acme.рф`` arrives from a browser as ``jane%40acme.%D1%80%D1%84``: the top-level domain, letters
    only, did not read escapes, so the address was stored in clear; nor did a domain read a combining mark
    (Devanagari vowel signs), so ``jane@acme.भारत`` was stored in clear too."""
    assert scrub_text(value, KEY) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://x.example/?e=jane%40acme%2Ecom&z=1", f"https://x.example/?e={JANE}&z=1"),
        ("https://x.example/?e=Jane%40ACME%2eCOM", f"https://x.example/?e={JANE}"),
        ("https://x.example/?e=jane%2Edoe%40acme%2Eco%2Euk", f"https://x.example/?e={token('jane.doe@acme.co.uk')}"),
        ("https://x.example/?e=jane%2edoe%40acme.com", f"https://x.example/?e={token('jane.doe@acme.com')}"),
        ("to=s%253Fe%253Djane%2540acme%252Ecom%2526x", f"to=s%253Fe%253D{JANE}%2526x"),
        # any letter, digit or '-' escaped (some encoders escape all but a few characters)
        ("https://x.example/?e=%6Aane%40%61cme%2Dx.%63om", f"https://x.example/?e={token('jane@acme-x.com')}"),
        ("https://x.example/?e=%4A%41%4E%45%40acme.com", f"https://x.example/?e={JANE}"),
        # an escaped dot after the address ends a sentence, and one before a file extension still names a file
        ("https://x.example/?e=jane%40acme.com%2E", f"https://x.example/?e={JANE}%2E"),
        ("https://x.example/img/hero%402x%2Epng", "https://x.example/img/hero%402x%2Epng"),
    ],
)  # fmt: skip
def test_an_address_with_an_escaped_dot_or_letter_is_scrubbed(value: str, expected: str) -> None:
    """``%2E`` is '.', and an encoder may escape it (or any letter): ``jane%40acme%2Ecom`` had no domain with
    a dot to the scrub and was stored in clear; ``%6Aane%40acme.com`` became ``%6A`` + the token of
    ``ane@acme.com``, which joins no lead."""
    assert scrub_text(value, KEY) == expected
