"""Email addresses inside URLs and utm tags, replaced by a keyed-hash token before rows reach ClickHouse.

Why: DESIGN §10 keeps emails in analytics only as a keyed hash, but campaign links carry the recipient's
address (``?email=jane%40acme.com``, ``mailto:`` links, a path segment), and the tracker sends the page URL
as it is. The token is ``email-hash:<hex>``, the same ``HMAC-SHA256(key, lower(trim(email)))`` as the
``email_hash`` columns (``sinks.rows.email_hash``), so analysts can join on it; ``:`` and hex digits are
valid in a URL path and query value, so the URL stays a URL. Nothing else of the value changes: the content
reports match a catalogue url up to the query string (docs/clickhouse.md).

Matched: plain (``jane.doe+news@acme.com``), percent-encoded (``jane%40acme.com``, ``jane%2Bnews%40…``) and
double-encoded (``jane%2540acme.com``, a link inside a redirect parameter), non-ASCII letters and combining
marks in both parts, the top-level domain too, as browsers send them (``jos%C3%A9%40b%C3%BCcher.example``,
``jane%40acme.%D1%80%D1%84``), escaped dots, letters and digits (``jane%40acme%2Ecom``). Left alone: a user
name before a URL's host (``https://user@host.com/``: a login at that host, and the host is what reports match
on), a file name
(``hero@2x.png``, ``guide@v2.pdf``: a "domain" ending in a file extension that is no top-level domain,
``_FILE_EXTENSIONS``; tokenised, a catalogue item's link no longer matched its url), a fediverse handle in
the URL's path (``https://mastodon.social/@jane@acme.social``: a public account name, ``_handle``), and an
id at a "domain" whose last label has a digit (``meeting_…@thread.v2`` in a Teams link: top-level domains are
letters, ``_TLD``). Cost, measured with timeit beside the ~3.7 us the compiled decoder took for the same web
visits: on the sink's fast path ~0.06-0.1 us a record without an address (``raw_might_hold_email``: a
``memchr``); a record with one ~17 us (scrubbed, hashed, re-encoded), rare.
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

TOKEN_PREFIX = "email-hash:"
#: The free-text URL and utm fields of each event schema (schemas/*.avsc) that can hold an address.
SCRUBBED_FIELDS: dict[str, tuple[str, ...]] = {
    "web_visit": ("url", "referrer", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"),
    "email_click": ("link_url",),
}


def _combining_marks() -> str:
    """A regex class of the combining marks (categories Mn, Mc, Me) of the Basic Multilingual Plane: part of a
    word in many scripts (the vowel sign in Devanagari ``भारत``), but not ``\\w`` to ``re``. Built from
    ``unicodedata`` over the blocks holding any (~1 ms at import)."""
    marks = [
        chr(c)
        for block in (*range(0x03, 0x1E), 0x20, 0x2C, 0x2D, 0x30, *range(0xA6, 0xAC), 0xFB, 0xFE)
        for c in range(block << 8, (block + 1) << 8)
        if unicodedata.category(chr(c)).startswith("M")
    ]
    return "[" + "".join(marks) + "]"


_MARK = _combining_marks()
# Local part: RFC 5322 atext (and any Unicode letter or mark, RFC 6531) without the characters that delimit
# URL parts (& = / ? # %) or lists ('|': no mail provider allows it, and Outlook Safe Links carry
# data=05|01|jane@acme.com|…), plus the percent-encoded forms of the kept specials (%2B is '+', %2E '.'), of
# ASCII letters and digits (%6A is 'j') and of UTF-8 bytes (%C3%A9 is 'é'), once or twice encoded. Bounded
# (64 a local part, 63 a label, as in RFC 5321).
# Why read backwards from each separator, not one regex over the value: tried at every position of a URL,
# such a regex cost ~20 us a URL; matched on the reversed text before a separator it costs the address.
# Reversed, an escape "%2B" reads "B2%", and the lookaheads keep the part from starting inside an escape
# (%XX or %25XX), or "%3Djane%40acme.com" would be read as the address "3Djane@acme.com".
_ESCAPE_REVERSED = (
    r"(?:[147ABDEabde]2|[0-9]3|[1-9A-Fa-f]4|[0-9AEFaef]5|[0-9A-Fa-f]6|[0-9ABDEabde]7|[0-9A-Fa-f][89A-Fa-f])"
    r"(?:52)?%"
)
_NOT_IN_ESCAPE_REVERSED = r"(?!%)(?![0-9A-Fa-f]%)(?!52%)(?![0-9A-Fa-f]52%)"
_LOCAL_REVERSED = re.compile(
    rf"(?:{_ESCAPE_REVERSED}|[\w.+!$'*^`{{}}~-]|{_MARK}){{1,64}}{_NOT_IN_ESCAPE_REVERSED}"
)
_LOCAL_MAX_CHARS = 64 * 5  # 64 characters, each at most a twice-encoded escape (%25XX)
# What a local part does not start with here: its specials (plain or escaped, once or twice). RFC 5322 allows
# them there, but in a URL they quote or mark up an address ('jane@acme.com', *jane@…*, {jane@…}), and read
# into it the token joined no lead. Left in the URL as they are.
_LEADING_SPECIALS = re.compile(r"(?:[.+!$'*^`{}~-]|%(?:25)?(?:2[147ABDE]|5E|60|7[BDE]))+", re.IGNORECASE)
# A domain label: letters, digits, marks and '-', each also escaped (once or twice), a non-ASCII letter as the
# escapes of its UTF-8 bytes: browsers send ``bücher.example`` in a URL as ``b%C3%BCcher.example``. The dots
# between labels too (``acme%2Ecom``).
_UTF8_ESCAPE = r"%(?:25)?[89A-Fa-f][0-9A-Fa-f]"
_LETTER_ESCAPE = r"%(?:25)?(?:[46][1-9A-Fa-f]|[57][0-9Aa])"

_ALNUM_ESCAPE = rf"(?:{_UTF8_ESCAPE}|{_LETTER_ESCAPE}|%(?:25)?3[0-9])"
_ALNUM = rf"(?:[^\W_]|{_ALNUM_ESCAPE})"
_LABEL = rf"{_ALNUM}(?:(?:[\w-]|{_MARK}|{_ALNUM_ESCAPE}|%(?:25)?2[Dd]){{0,61}}(?:{_ALNUM}|{_MARK}))?"
_DOT = r"(?:\.|%(?:25)?2[Ee])"
# The top-level domain: letters (an IANA rule; and marks after the first) or an ``xn--`` IDN, not followed by
# a letter or digit, so ``thread.v2`` (a Teams meeting id) is no domain, and ``acme.com_q3`` ends at ``com``.
# Escaped (``acme.%D1%80%D1%84`` is ``acme.рф``) it is decoded and checked by ``_tld_length``, which also ends
# it before an escaped ” after ``acme.com``.
_TLD_CHAR = rf"(?:[^\W\d_]|{_UTF8_ESCAPE}|{_LETTER_ESCAPE})"
_TLD = rf"(?P<tld>xn--[^\W_](?:[\w-]{{0,57}}[^\W_])?|{_TLD_CHAR}(?:{_TLD_CHAR}|{_MARK}){{1,251}})(?![^\W_])"
_DOMAIN = re.compile(rf"(?:{_LABEL}(?P<dot>{_DOT})){{1,16}}{_TLD}")
_UNIT = re.compile(r"%(?:25)?([0-9A-Fa-f]{2})|.", re.DOTALL)  # a character or an escaped byte
_SEPARATOR = re.compile(r"@|%40|%2540")
#: File extensions that are no top-level domain (checked against IANA's list; .zip, .mov, .md and .map are
#: TLDs and stay out): ``hero@2x.png`` or ``guide@v2.pdf`` in a path names a file, not an address. Those with
#: a digit (mp4, woff2) are no TLD by ``_TLD`` already.
_FILE_EXTENSIONS = frozenset(
    {"png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "bmp", "ico", "tif", "tiff", "heic", "pdf", "html",
     "htm", "xhtml", "php", "asp", "aspx", "jsp", "js", "mjs", "css", "json", "xml", "txt", "csv", "doc",
     "docx", "xls", "xlsx", "ppt", "pptx", "odt", "rtf", "webm", "ogg", "wav", "avi", "mkv", "woff", "ttf",
     "otf", "eot", "gz", "tgz", "tar", "rar", "exe", "apk", "msi", "dmg", "epub"}
)  # fmt: skip
_AUTHORITY_ENDS = frozenset("/?#:")
_PATH_QUERY_FRAGMENT = re.compile(r"[/?#]")
_AUTHORITY_END = re.compile(r"[/?#@]")
# Look-around bound of the user-name test, keeping it linear in long values; a longer "user name" is hashed.
_USERINFO_MAX_CHARS = 512
# A fediverse account name (Mastodon's ``Account::USERNAME_RE``): letters, digits, '_', and '.'/'-' inside.
_HANDLE_USER = re.compile(r"[a-z0-9_]+(?:[.-]+[a-z0-9_]+)*", re.IGNORECASE)


def might_hold_email(value: str) -> bool:
    """The cheap test run on every value: ``%2540`` (a double-encoded ``@``) holds neither of the others."""
    return "@" in value or "%40" in value or "%2540" in value


def keyed_email_hash(email: str, key: bytes) -> str:
    """HMAC-SHA256 of the trimmed, lower-cased address, hex: what the ``email_hash`` columns hold
    (``sinks.rows.email_hash``) and what a token carries, so the two join."""
    return hmac.new(key, email.strip().lower().encode("utf-8"), hashlib.sha256).hexdigest()


def email_token(email: str, key: bytes) -> str:
    """``email-hash:`` + the keyed hash of the address."""
    return TOKEN_PREFIX + keyed_email_hash(email, key)


def _chars(text: str, start: int, end: int) -> Iterator[tuple[str, int]]:
    """The characters of ``text[start:end]`` as a URL means them, each with where it ends in ``text``: an
    escape (once or twice encoded) is a UTF-8 byte. Stops at a byte sequence that is no UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    for unit in _UNIT.finditer(text, start, end):
        if unit[1] is None:
            yield unit[0], unit.end()
            continue
        try:
            char = decoder.decode(bytes((int(unit[1], 16),)))
        except UnicodeDecodeError:
            return
        if char:  # else the next escape continues this character
            yield char, unit.end()


def _tld_length(text: str, start: int, end: int) -> int:
    """How much of ``text[start:end]`` is a top-level domain: a letter, then letters and marks, 2 to 63 of
    them, escapes read as UTF-8 (``%D1%80%D1%84`` is ``рф``); 0 when none. It ends before any other
    character, so an escaped ” after ``acme.com`` or ``acme.рф`` is left out."""
    if text.startswith("xn--", start) or text.find("%", start, end) < 0:  # the regex checked all but length
        return end - start if end - start <= 63 else 0
    length = chars = 0
    for char, char_end in _chars(text, start, end):
        if not (char.isalpha() or (chars and unicodedata.category(char).startswith("M"))):
            break
        length, chars = char_end - start, chars + 1
    return length if 2 <= chars <= 63 else 0


def _after_symbols(text: str, start: int, end: int) -> int:
    """``start`` moved past the escaped quotes or other symbols before an address (``%E2%80%9C`` is “): no
    part of it (``_LEADING_SPECIALS`` are the ASCII ones), and read into it the token joined no lead."""
    for char, char_end in _chars(text, start, end):
        if char.isalnum() or char == "_" or unicodedata.category(char).startswith("M"):
            break
        start = char_end
    return start


def _domain(text: str, start: int) -> tuple[int, int] | None:
    """Where the domain at ``text[start:]`` ends and where its top-level domain starts, or None: the longest
    ``_DOMAIN`` whose top-level domain ``_tld_length`` accepts, one label shorter while it does not."""
    endpos = len(text)
    while (domain := _DOMAIN.match(text, start, endpos)) is not None:
        tld_start = domain.start("tld")
        if length := _tld_length(text, tld_start, domain.end()):
            return tld_start + length, tld_start
        endpos = domain.start("dot")
    return None


def _userinfo(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]``, around a literal ``@``, is ``user@host`` of a URL's authority: right after
    ``//`` (nothing but userinfo between), the host followed by the end, a port, a path, a query or a
    fragment, and that ``@`` the authority's last: the host follows the last one, as browsers and ``urllib``
    read it, so in ``//jane@acme.com:pw@evil.example/`` the address is the user name and is scrubbed."""
    slashes = text.rfind("//", max(0, start - _USERINFO_MAX_CHARS), start)
    if slashes < 0 or _PATH_QUERY_FRAGMENT.search(text, slashes + 2, start):
        return False
    if end == len(text):
        return True
    if text[end] not in _AUTHORITY_ENDS:
        return False
    later = _AUTHORITY_END.search(text, end, end + _USERINFO_MAX_CHARS)  # a later '@', or the path
    return text[later.start()] != "@" if later else end + _USERINFO_MAX_CHARS >= len(text)


def _handle(text: str, start: int, at: int, end: int, path_end: int) -> bool:
    """Whether ``text[start:end]`` is the ``user@instance`` of a fediverse handle in the URL's path (which
    ends at ``path_end``): a whole segment ``/@user@instance``, literal '@'s and an account name. Anywhere
    else (a query value, a fragment, a nested URL) ``@jane@acme.com`` may be an address as a mention:
    hashed."""
    return (
        start < path_end
        and text.startswith("/@", start - 2)
        and (end == len(text) or text[end] in "/?#")
        and _HANDLE_USER.fullmatch(text, start, at) is not None
    )


def scrub_text(value: str, key: bytes) -> str:
    """``value`` with every email address in it replaced by its token; the same object when none is."""
    if not might_hold_email(value):
        return value
    parts: list[str] = []
    done = 0  # value[:done] is in parts
    path_end = min((i for i in (value.find("?"), value.find("#")) if i >= 0), default=len(value))
    for separator in _SEPARATOR.finditer(value):
        at, after = separator.span()
        domain = _domain(value, after) if at > done else None
        if domain is None or unquote(unquote(value[domain[1] : domain[0]])).lower() in _FILE_EXTENSIONS:
            continue
        before = value[max(done, at - _LOCAL_MAX_CHARS) : at]
        local = _LOCAL_REVERSED.match(before[::-1])
        if local is None:
            continue
        start, end = at - local.end(), domain[0]
        quoted = _LEADING_SPECIALS.match(value, start, at)
        if quoted is not None:
            start = quoted.end()
        if value.startswith("%", start):
            start = _after_symbols(value, start, at)
        if start == at:
            continue
        if separator[0] == "@" and (_userinfo(value, start, end) or _handle(value, start, at, end, path_end)):
            continue
        # Decoded twice: a '%25' left after once is the double encoding of an escape (no address holds '%').
        address = unquote(unquote(f"{value[start:at]}@{value[after:end]}"))
        parts += (value[done:start], email_token(address, key))
        done = end
    if not parts:
        return value
    parts.append(value[done:])
    return "".join(parts)


def scrub_event(schema: str, record: Mapping[str, Any], key: bytes) -> dict[str, Any] | None:
    """A copy of an event ``record`` with the addresses in its URL/utm fields tokenised, or None when it has
    none (the common case: the caller then keeps the record, and its encoded bytes, as they are). The test
    of each value is inlined: this runs for every event the sink stores."""
    scrubbed: dict[str, Any] | None = None
    for name in SCRUBBED_FIELDS.get(schema, ()):
        value = record.get(name)
        if value and ("@" in value or "%40" in value or "%2540" in value):
            clean = scrub_text(value, key)
            if clean != value:
                if scrubbed is None:
                    scrubbed = dict(record)
                scrubbed[name] = clean
    return scrubbed


def raw_might_hold_email(body: bytes) -> bool:
    """The test on an encoded record: an Avro string is its UTF-8 bytes, so an address in any field leaves
    ``@`` or ``%40`` in the body (a ``0x40`` byte of a number only makes the caller look at the fields).
    Bytes are searched for an int first: that is a ``memchr``, ~10x cheaper here than a bytes needle."""
    return 64 in body or (37 in body and (b"%40" in body or b"%2540" in body))  # 64 '@', 37 '%'


def scrub_signals(signals: Sequence[Mapping[str, Any]], key: bytes) -> Sequence[Mapping[str, Any]]:
    """Signals (``lead_score.reasons``, ``hot_lead.signals``) with their ``detail`` scrubbed: it is the
    event's url, or ``campaign:link_url`` for an email click (``agents.scoring.detail_of``)."""
    out: list[Mapping[str, Any]] | None = None
    for i, signal in enumerate(signals):
        detail = signal.get("detail")
        if detail and might_hold_email(detail):
            clean = scrub_text(detail, key)
            if clean != detail:
                if out is None:
                    out = list(signals)
                out[i] = {**signal, "detail": clean}
    return signals if out is None else out
