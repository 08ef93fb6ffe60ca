"""The sections of the rules file as pydantic models: what each key may hold, and the checks that keep an
entry from silently matching everything or nothing.

Why strict models: a sales-ops user edits the YAML by hand; a quoted number, a blank list entry or a key that
can never match would otherwise change every lead's score without a word (rules audit). ``agents/rules.py``
assembles them into ``Rules`` and compiles them for the hot path.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

#: A recipient in ``sla.escalation``: a role (owner, manager), a team or an address, never blank or padded.
ESCALATION_NAME = re.compile(r"[A-Za-z0-9_.@-]+")


class RulesModel(BaseModel):
    # allow_inf_nan: a `.nan` or `.inf` in the YAML is a float to pydantic; it would score every lead NaN.
    # strict: a quoted '100', a `true` where points belong or 'yes' for a flag is a mistake to show, not to
    # coerce (lax pydantic read `points: true` as 1 point); a whole number is still a valid float.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)


#: Bounds that keep every derived millisecond deadline and every sum finite: durations of at most 100 years
#: (1e300 days overflowed the SLA scan's int deadline) and points far beyond any sensible weight (1e308
#: points summed to infinity). Half-lives need no maximum (a huge one is simply no decay) but a floor, below.
MAX_DAYS = 36_500.0
MAX_HOURS = MAX_DAYS * 24
MAX_POINTS = 1_000_000.0
Points = Annotated[float, Field(ge=-MAX_POINTS, le=MAX_POINTS)]

#: The shortest half-life: 1 hour, in the file's unit (days). Below about 4e-317 days the decay constant
#: ln 2 / half-life overflowed to infinity, and an event at the lead's newest event time decayed by
#: exp(-inf * 0) = NaN: the score stayed NaN for good. No lead-scoring signal fades in minutes, so the floor
#: sits well above the arithmetic limit and refuses a unit slip (hours or minutes written as days) too.
MIN_HALF_LIFE_DAYS = 1 / 24


def _half_life(days: float) -> float:
    if days < MIN_HALF_LIFE_DAYS:  # 0 and negatives too; inf and nan are refused as not finite before this
        raise ValueError(f"must be >= {MIN_HALF_LIFE_DAYS:g} (1 hour)")
    return days


HalfLifeDays = Annotated[float, AfterValidator(_half_life)]


def _at(sub_path: str, problem: str) -> ValueError:
    """An error about a key below the validated model: ``sub_path`` (``.key`` or ``[i]``) is appended to the
    model's key path in the message (``disqualify.email_domains[0]: ...``)."""
    return ValueError(f"{sub_path}: {problem}")


def _blank_or_padded(table: str, keys: Any, what: str = "never matches") -> ValueError | None:
    for i, key in enumerate(keys):
        if not key.strip() or key != key.strip():
            where = f"[{i}]" if isinstance(keys, list) else ""
            return _at(f".{table}{where}", f"{key!r} is blank or has surrounding spaces: it {what}")
    return None


# A word character that ends a word: \w except kana and CJK ideographs. Japanese and Chinese do not
# separate words by spaces, so to \w a title like 営業部長 (sales director) was one word, and the keyword
# 部長 (or a disqualifying 学生, student, in 大学生) never matched: Japanese titles could not be scored.
_WORD = r"[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]"


def whole_words(keywords: list[str]) -> re.Pattern[str]:
    """One pattern matching any of ``keywords`` (lower-case) as a whole word, as every title rule is
    matched (``fit.title_keywords``, ``fit.support_roles``, ``disqualify.title_keywords`` and their
    exceptions). Here, not in ``agents/rules.py``, so that a validator can ask whether a phrase can match."""
    # whole words by lookaround, not \b: a keyword ending in punctuation (c++, c#) never matched with \b
    return re.compile("|".join(_word(k.lower()) for k in keywords))


def _word(keyword: str) -> str:
    """A keyword as a whole word: no word character may touch an end of it that is a word character. An
    end that is punctuation bounds itself, at the start as at the end: a possessive "'s assistant" follows
    its owner's last letter ("ceo's assistant"), which a lookbehind refused, and a dotted name such as
    ``.net`` is matched in "ASP.NET Developer" (a .NET framework) as ``c++`` is in "C++/CLI". Decided, not
    an oversight: the punctuation is the separator the user wrote into the keyword."""
    before = f"(?<!{_WORD})" if keyword[:1].isalnum() or keyword[:1] == "_" else ""
    after = f"(?!{_WORD})" if keyword[-1:].isalnum() or keyword[-1:] == "_" else ""
    return f"{before}{re.escape(keyword)}{after}"


class RuleSpec(RulesModel):
    """Points one matching event earns. A bare number in YAML is shorthand for ``{points: N}``."""

    points: Points
    half_life_days: HalfLifeDays | None = None  # None = scoring.default_half_life_days
    daily_cap: int | None = Field(default=None, ge=1)  # max scored events per event-time UTC day
    immediate_mql: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return {"points": data}
        return data


class ScoringRules(RulesModel):
    default_half_life_days: HalfLifeDays = 30.0  # huge = no decay (tests use 1e6)
    event_type: dict[str, RuleSpec] = Field(default_factory=dict)
    page_category: dict[str, RuleSpec] = Field(default_factory=dict)
    content_type: dict[str, RuleSpec] = Field(default_factory=dict)
    asset_type: dict[str, RuleSpec] = Field(default_factory=dict)
    email_link: dict[str, RuleSpec] = Field(default_factory=dict)  # substring of link_url, case-insensitive

    @model_validator(mode="after")
    def _keys_that_can_match(self) -> ScoringRules:
        for name in self.event_type:
            if name not in EVENT_TYPES:
                raise _at(".event_type", f"unknown event type {name!r}; known: {', '.join(EVENT_TYPES)}")
        for table in ("page_category", "content_type", "asset_type"):
            if (problem := _blank_or_padded(table, getattr(self, table))) is not None:
                raise problem
        if (problem := _blank_or_padded("email_link", self.email_link, "matches every link")) is not None:
            raise problem
        # matched case-insensitively, first in file order: a key equal to or containing an earlier one can
        # never match (it was silently shadowed, or dropped from the compiled table when equal)
        keys = list(self.email_link)
        for i, key in enumerate(keys):
            for earlier in keys[:i]:
                if earlier.lower() == key.lower():
                    raise _at(f".email_link.{key}", f"same as {earlier!r} (matched case-insensitively)")
                if earlier.lower() in key.lower():
                    raise _at(
                        f".email_link.{key}",
                        f"never matches: every link containing it contains {earlier!r}, listed earlier "
                        "(the first match in file order wins; list the longer one first)",
                    )
        return self


class SizeBand(RulesModel):
    min: int = Field(ge=0)
    points: Points


#: The profile's ``country`` is an ISO 3166-1 alpha-2 code, compared upper-case.
COUNTRY_CODE = re.compile(r"[A-Z]{2}")


class SupportRoles(RulesModel):
    """Titles of people who work for a decision maker: "Assistant to the President", 社長秘書. The title
    keyword they contain (president, 社長) names the person supported, not the lead, so a title with one of
    ``keywords`` (whole words, case-insensitive, like ``title_keywords``) outside every ``exceptions``
    phrase scores ``points`` instead of its title keywords. Used only where title keywords are: when the
    profile has no seniority."""

    points: Points
    keywords: list[str]
    # Whole-word phrases in which a keyword names the lead's own job, not a person the lead supports: an
    # "Intern Program Manager" runs the intern program (a manager, 8), a "Secretary to the Board" is the
    # board's officer, like a Company Secretary. Phrases, not fewer keywords: "Marketing Intern" and
    # "Secretary to the Director" are still support roles.
    exceptions: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _keywords_that_can_match(self) -> SupportRoles:
        what = "would make every job title a support role"
        if (problem := _blank_or_padded("keywords", self.keywords, what)) is not None:
            raise problem
        if (problem := _blank_or_padded("exceptions", self.exceptions)) is not None:
            raise problem
        # matched as titles are: "internship program" holds the letters of intern but never excepts it
        pattern = whole_words(self.keywords) if self.keywords else None
        for i, phrase in enumerate(self.exceptions):
            if pattern is None or not pattern.search(phrase.lower()):
                raise _at(
                    f".exceptions[{i}]",
                    f"{phrase!r} contains none of keywords as a whole word, so it never excepts anything",
                )
        return self


class FitRules(RulesModel):
    company_size: list[SizeBand] = Field(default_factory=list)
    industry: dict[str, Points] = Field(default_factory=dict)
    seniority: dict[str, Points] = Field(default_factory=dict)
    title_keywords: dict[str, Points] = Field(default_factory=dict)  # used when seniority is missing
    # None (the section left out) = no title is a support role
    support_roles: SupportRoles | None = None
    country: dict[str, Points] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keys_that_can_match(self) -> FitRules:
        for table in ("industry", "seniority", "title_keywords"):
            what = "matches every job title" if table == "title_keywords" else "never matches"
            if (problem := _blank_or_padded(table, getattr(self, table), what)) is not None:
                raise problem
        for code in self.country:
            if not COUNTRY_CODE.fullmatch(code):
                raise _at(
                    f".country.{code}",
                    "not an upper-case ISO 3166-1 alpha-2 code (JP, US, GB, ...), so no profile matches it",
                )
        if self.support_roles is not None:
            # the same words in both lists: the keyword's own points could never apply
            keywords = {keyword.lower() for keyword in self.title_keywords}
            for i, marker in enumerate(self.support_roles.keywords):
                if marker.lower() in keywords:
                    raise _at(
                        f".support_roles.keywords[{i}]",
                        f"{marker!r} is also a title_keywords key, whose points would never apply (a title "
                        "with it is a support role); keep it in one of the two",
                    )
        minimums = [band.min for band in self.company_size]
        for minimum in minimums:
            if minimums.count(minimum) > 1:
                raise _at(".company_size", f"min {minimum} is given twice; only one of its bands would apply")
        return self


class DisqualifyRules(RulesModel):
    flags: list[str] = Field(default_factory=list)
    email_domains: list[str] = Field(default_factory=list)  # the domain or any subdomain of it
    email_domain_suffixes: list[str] = Field(default_factory=list)  # e.g. .edu, .ac.jp
    title_keywords: list[str] = Field(default_factory=list)  # whole words, case-insensitive
    # Whole-word phrases in which a title keyword does not disqualify: "Student Recruitment Manager" and
    # 学生採用担当部長 hire students (buyers of recruiting tools), they are not students.
    title_exceptions: list[str] = Field(default_factory=list)

    @field_validator("email_domains", "email_domain_suffixes")
    @classmethod
    def _lower_case(cls, names: list[str]) -> list[str]:
        return [name.lower() for name in names]  # the email's domain is compared lower-case

    @model_validator(mode="after")
    def _entries_that_can_match(self) -> DisqualifyRules:
        # a blank suffix or title keyword disqualified every lead (every domain ends with '')
        for table in ("flags", "email_domains", "email_domain_suffixes", "title_keywords"):
            what = "never matches" if table in ("flags", "email_domains") else "would match every lead"
            if (problem := _blank_or_padded(table, getattr(self, table), what)) is not None:
                raise problem
        if (problem := _blank_or_padded("title_exceptions", self.title_exceptions)) is not None:
            raise problem
        # matched as titles are: "studentship office" holds the letters of student but never excepts it
        pattern = whole_words(self.title_keywords) if self.title_keywords else None
        for i, phrase in enumerate(self.title_exceptions):
            if pattern is None or not pattern.search(phrase.lower()):
                raise _at(
                    f".title_exceptions[{i}]",
                    f"{phrase!r} contains none of title_keywords as a whole word, so it never excepts"
                    " anything",
                )
        for i, domain in enumerate(self.email_domains):
            if not DOMAIN.fullmatch(domain):
                raise _at(
                    f".email_domains[{i}]",
                    f"{domain!r} is not a domain name such as competitor.example (no '@', no spaces)",
                )
        for i, suffix in enumerate(self.email_domain_suffixes):
            if not suffix.startswith(".") or not DOMAIN.fullmatch(suffix[1:]):
                raise _at(
                    f".email_domain_suffixes[{i}]",
                    f"{suffix!r} must start with '.' and be a domain ending such as .edu or .ac.jp",
                )
        return self


#: A domain (or the part of one after a suffix's leading dot), lower-case.
DOMAIN = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")


class StageRules(RulesModel):
    # > 0: at 0 or below every identified lead would be hot at once
    mql_threshold: float = Field(default=100.0, gt=0)
    engaged_event_types: list[str] = Field(default_factory=lambda: ["email_click"])
    engaged_page_categories: list[str] = Field(default_factory=lambda: ["product", "pricing"])
    warm_from: float = Field(default=50.0, ge=0)  # band: cold < warm_from <= warm <= mql_threshold < hot

    @model_validator(mode="after")
    def _known_event_types(self) -> StageRules:
        for name in self.engaged_event_types:
            if name not in EVENT_TYPES:
                raise _at(
                    ".engaged_event_types",
                    f"unknown event type {name!r}; known: {', '.join(EVENT_TYPES)}",
                )
        if (problem := _blank_or_padded("engaged_page_categories", self.engaged_page_categories)) is not None:
            raise problem
        return self


class FollowUp(RulesModel):
    hours: float = Field(default=24.0, gt=0, le=MAX_HOURS)
    immediate_hours: float = Field(default=1.0, gt=0, le=MAX_HOURS)


class Escalation(RulesModel):
    """Who each SLA level notifies (names the notification shell resolves: owner, manager, ...)."""

    warning: list[str] = Field(default_factory=lambda: ["owner"])
    breach: list[str] = Field(default_factory=lambda: ["owner", "manager"])

    @model_validator(mode="after")
    def _names(self) -> Escalation:
        """Whoever routes ``sla_timeout.notify`` matches these names exactly: a blank, padded or repeated
        name is a typo that would page nobody (or someone twice), so it is refused here, not downstream."""
        for level in ("warning", "breach"):
            names: list[str] = getattr(self, level)
            for i, name in enumerate(names):
                if not ESCALATION_NAME.fullmatch(name):
                    raise ValueError(
                        f"{level}[{i}]: {name!r} is not a recipient name (letters, digits, '_', '-', '.', "
                        "'@'; no spaces)"
                    )
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{level}: {repeated} named more than once")
        return self


class SlaRules(RulesModel):
    hot_lead_follow_up: FollowUp = FollowUp()
    segments: dict[str, FollowUp] = Field(default_factory=dict)
    warning_fraction: float = Field(default=0.5, gt=0, lt=1)
    rejection_feedback_days: float = Field(default=2.0, gt=0, le=MAX_DAYS)
    escalation: Escalation = Escalation()

    @model_validator(mode="after")
    def _segments_inherit(self) -> SlaRules:
        """A segment overrides what it names; the rest comes from ``hot_lead_follow_up`` (``enterprise:
        {hours: 4}`` used to give enterprise direct inquiries the built-in 1 h, not the file's own)."""
        default, given = self.hot_lead_follow_up, self.segments
        segments = {
            name: FollowUp(
                hours=spec.hours if "hours" in spec.model_fields_set else default.hours,
                immediate_hours=spec.immediate_hours
                if "immediate_hours" in spec.model_fields_set
                else default.immediate_hours,
            )
            for name, spec in self.segments.items()
        }
        self.__dict__["segments"] = segments  # frozen model: set once, here, before anyone reads it
        clocks = [("hot_lead_follow_up", default, True)]
        clocks += [
            (f"segments.{n}", s, "immediate_hours" in given[n].model_fields_set) for n, s in segments.items()
        ]
        for name, spec, own in clocks:
            if spec.immediate_hours > spec.hours:
                inherited = "" if own else ", from sla.hot_lead_follow_up,"
                raise _at(
                    f".{name}.immediate_hours",
                    f"must be <= hours ({spec.immediate_hours:g} h{inherited} > {spec.hours:g} h): direct "
                    "inquiries are the urgent ones",
                )
        if (problem := _blank_or_padded("segments", self.segments)) is not None:
            raise problem
        return self


class RecycleRules(RulesModel):
    mql_not_accepted_days: float = Field(default=14.0, gt=0, le=MAX_DAYS)
    dormant_customer_days: float = Field(default=180.0, gt=0, le=MAX_DAYS)


class StateRules(RulesModel):
    dedup_window_days: float = Field(default=30.0, gt=0, le=MAX_DAYS)
    max_seen_ids: int = Field(default=2000, ge=10)
    anonymous_buffer: int = Field(default=200, ge=0)
    top_signals: int = Field(default=10, ge=1)
    reasons: int = Field(default=5, ge=1)
    account_window_days: float = Field(default=30.0, gt=0, le=MAX_DAYS)


EVENT_TYPES = ("web_visit", "email_click", "download", "content_view")
