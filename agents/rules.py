"""The scoring, stage and SLA rules: one YAML file, validated at start, compiled once into lookup dicts.

Why compile: ``step`` runs per event at >15k events/s, so every rule lookup must be one dict access and every
half-life a precomputed decay constant, never a walk over the YAML tree. Why errors carry the key path:
a sales-ops user edits this file by hand and must read *which* key is wrong
(``rules.yaml: scoring.page_category.pricing.half_life_days: must be > 0``), not a pydantic location tuple.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_RULES_PATH = Path(__file__).resolve().parent / "rules.default.yaml"
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
LN2 = math.log(2.0)
#: A recipient in ``sla.escalation``: a role (owner, manager), a team or an address, never blank or padded.
ESCALATION_NAME = re.compile(r"[A-Za-z0-9_.@-]+")


class RulesError(Exception):
    """The rules file is unreadable or invalid; the message names the file and each bad key path."""


class _Model(BaseModel):
    # allow_inf_nan: a `.nan` or `.inf` in the YAML is a float to pydantic; it would score every lead NaN.
    # strict: a quoted '100', a `true` where points belong or 'yes' for a flag is a mistake to show, not to
    # coerce (lax pydantic read `points: true` as 1 point); a whole number is still a valid float.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)


#: Bounds that keep every derived millisecond deadline and every sum finite: durations of at most 100 years
#: (1e300 days overflowed the SLA scan's int deadline) and points far beyond any sensible weight (1e308
#: points summed to infinity). Half-lives need none: a huge one is simply no decay.
MAX_DAYS = 36_500.0
MAX_HOURS = MAX_DAYS * 24
MAX_POINTS = 1_000_000.0
Points = Annotated[float, Field(ge=-MAX_POINTS, le=MAX_POINTS)]


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


class RuleSpec(_Model):
    """Points one matching event earns. A bare number in YAML is shorthand for ``{points: N}``."""

    points: Points
    half_life_days: float | None = Field(default=None, gt=0)  # None = scoring.default_half_life_days
    daily_cap: int | None = Field(default=None, ge=1)  # max scored events per event-time UTC day
    immediate_mql: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return {"points": data}
        return data


class ScoringRules(_Model):
    default_half_life_days: float = Field(default=30.0, gt=0)  # huge = no decay (tests use 1e6)
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


class SizeBand(_Model):
    min: int = Field(ge=0)
    points: Points


#: The profile's ``country`` is an ISO 3166-1 alpha-2 code, compared upper-case.
COUNTRY_CODE = re.compile(r"[A-Z]{2}")


class FitRules(_Model):
    company_size: list[SizeBand] = Field(default_factory=list)
    industry: dict[str, Points] = Field(default_factory=dict)
    seniority: dict[str, Points] = Field(default_factory=dict)
    title_keywords: dict[str, Points] = Field(default_factory=dict)  # used when seniority is missing
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
        minimums = [band.min for band in self.company_size]
        for minimum in minimums:
            if minimums.count(minimum) > 1:
                raise _at(".company_size", f"min {minimum} is given twice; only one of its bands would apply")
        return self


class DisqualifyRules(_Model):
    flags: list[str] = Field(default_factory=list)
    email_domains: list[str] = Field(default_factory=list)  # the domain or any subdomain of it
    email_domain_suffixes: list[str] = Field(default_factory=list)  # e.g. .edu, .ac.jp
    title_keywords: list[str] = Field(default_factory=list)  # whole words, case-insensitive

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


class StageRules(_Model):
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


class FollowUp(_Model):
    hours: float = Field(default=24.0, gt=0, le=MAX_HOURS)
    immediate_hours: float = Field(default=1.0, gt=0, le=MAX_HOURS)


class Escalation(_Model):
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


class SlaRules(_Model):
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


class RecycleRules(_Model):
    mql_not_accepted_days: float = Field(default=14.0, gt=0, le=MAX_DAYS)
    dormant_customer_days: float = Field(default=180.0, gt=0, le=MAX_DAYS)


class StateRules(_Model):
    dedup_window_days: float = Field(default=30.0, gt=0, le=MAX_DAYS)
    max_seen_ids: int = Field(default=2000, ge=10)
    anonymous_buffer: int = Field(default=200, ge=0)
    top_signals: int = Field(default=10, ge=1)
    reasons: int = Field(default=5, ge=1)
    account_window_days: float = Field(default=30.0, gt=0, le=MAX_DAYS)


EVENT_TYPES = ("web_visit", "email_click", "download", "content_view")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One scoring rule ready for the hot path: ``k`` = ln 2 / half-life in ms, so decay = exp(-k·Δt)."""

    name: str
    points: float
    k: float
    half_life_ms: float
    daily_cap: int | None
    immediate_mql: bool


class Rules(_Model):
    version: Literal[1] = 1  # the only format there is; a later one must not be read as this one
    scoring: ScoringRules = ScoringRules()
    fit: FitRules = FitRules()
    disqualify: DisqualifyRules = DisqualifyRules()
    stages: StageRules = StageRules()
    sla: SlaRules = SlaRules()
    recycle: RecycleRules = RecycleRules()
    late_window_days: float = Field(default=3.0, gt=0, le=MAX_DAYS)
    # Also late: an event that entered Kafka more than late_window_days after its event_time (a backfill, an
    # import of old CRM history). Off by default: see docs/scoring.md, "Late and stale events".
    late_by_arrival: bool = False
    state: StateRules = StateRules()

    @model_validator(mode="after")
    def _cross_checks(self) -> Rules:
        # every follow-up clock, segments' too: a lead recycled before its SLA breaches is never escalated
        clocks = [("hot_lead_follow_up", self.sla.hot_lead_follow_up)]
        clocks += [(f"segments.{name}", spec) for name, spec in self.sla.segments.items()]
        for name, spec in clocks:
            if self.recycle.mql_not_accepted_days <= spec.hours / 24:
                raise ValueError(
                    f"recycle.mql_not_accepted_days: must be longer than sla.{name}.hours "
                    f"({self.recycle.mql_not_accepted_days:g} days <= {spec.hours:g} h)"
                )
        if self.state.dedup_window_days < self.late_window_days:
            # older events are dropped unprocessed (stale), so an event could never be merely late
            raise ValueError(
                "state.dedup_window_days: must be >= late_window_days "
                f"({self.state.dedup_window_days:g} < {self.late_window_days:g})"
            )
        if self.stages.warm_from > self.stages.mql_threshold:
            raise ValueError("stages.warm_from: must be <= stages.mql_threshold")
        return self

    @cached_property
    def compiled(self) -> Compiled:
        """The lookup tables the hot path uses, built once per Rules object (cached in the instance dict)."""
        return Compiled.build(self)

    def rule(self, name: str) -> CompiledRule | None:
        """A compiled rule by its name (``table.key``), as stored in state accumulators."""
        return self.compiled.by_name.get(name)

    def match(self, schema: str, event: dict[str, Any]) -> CompiledRule | None:
        """The one rule an event scores under: the most specific table that names it, else its event type."""
        return self.compiled.match(schema, event)

    @property
    def late_window_ms(self) -> int:
        return self.compiled.late_window_ms

    def arrived_late(self, event_time: int, received_ms: int | None) -> bool:
        """Whether ``late_by_arrival`` makes an event received (entered Kafka) at ``received_ms`` late."""
        c = self.compiled
        return c.late_by_arrival and received_ms is not None and event_time < received_ms - c.late_window_ms

    @property
    def dedup_window_ms(self) -> int:
        return self.compiled.dedup_window_ms

    @property
    def account_window_ms(self) -> int:
        """Leads count in an account while their newest score is this close to the account's newest."""
        return self.compiled.account_window_ms


class Compiled:
    """Plain-Python lookups compiled from a ``Rules`` (pydantic attribute access is too slow per event)."""

    __slots__ = (
        "account_window_ms",
        "by_name",
        "dedup_window_ms",
        "email_links",
        "late_by_arrival",
        "late_window_ms",
        "sizes",
        "tables",
        "title_dq",
        "title_fit",
    )

    def __init__(self) -> None:
        self.by_name: dict[str, CompiledRule] = {}
        self.tables: dict[str, dict[str, CompiledRule]] = {}
        self.email_links: tuple[tuple[str, CompiledRule], ...] = ()
        self.title_dq: re.Pattern[str] | None = None
        self.title_fit: tuple[tuple[re.Pattern[str], float], ...] = ()
        self.sizes: tuple[tuple[int, float], ...] = ()  # (min employees, points), largest minimum first
        self.late_window_ms = 0
        self.late_by_arrival = False
        self.dedup_window_ms = 0
        self.account_window_ms = 0

    @classmethod
    def build(cls, rules: Rules) -> Compiled:
        c = cls()
        default_half_life = rules.scoring.default_half_life_days * DAY_MS
        for table in ("event_type", "page_category", "content_type", "asset_type", "email_link"):
            compiled: dict[str, CompiledRule] = {}
            for key, spec in getattr(rules.scoring, table).items():
                half_life = spec.half_life_days * DAY_MS if spec.half_life_days else default_half_life
                rule = CompiledRule(
                    f"{table}.{key}",
                    spec.points,
                    LN2 / half_life,
                    half_life,
                    spec.daily_cap,
                    spec.immediate_mql,
                )
                compiled[key.lower() if table == "email_link" else key] = rule
                c.by_name[rule.name] = rule
            c.tables[table] = compiled
        c.email_links = tuple(c.tables["email_link"].items())
        if rules.disqualify.title_keywords:
            c.title_dq = _words(rules.disqualify.title_keywords)
        c.title_fit = tuple((_words([kw]), pts) for kw, pts in rules.fit.title_keywords.items())
        c.sizes = tuple(sorted(((b.min, b.points) for b in rules.fit.company_size), reverse=True))
        c.late_window_ms = int(rules.late_window_days * DAY_MS)
        c.late_by_arrival = rules.late_by_arrival
        c.dedup_window_ms = int(rules.state.dedup_window_days * DAY_MS)
        c.account_window_ms = int(rules.state.account_window_days * DAY_MS)
        return c

    def match(self, schema: str, event: dict[str, Any]) -> CompiledRule | None:
        tables = self.tables
        specific: CompiledRule | None = None
        if schema == "web_visit":
            specific = tables["page_category"].get(event.get("page_category") or "")
        elif schema == "download":
            specific = tables["asset_type"].get(event.get("asset_type") or "")
        elif schema == "content_view":
            specific = tables["content_type"].get(event.get("content_type") or "")
        elif schema == "email_click" and self.email_links:
            url = (event.get("link_url") or "").lower()
            for needle, rule in self.email_links:
                if needle in url:
                    specific = rule
                    break
        return specific if specific is not None else tables["event_type"].get(schema)


def _words(keywords: list[str]) -> re.Pattern[str]:
    # whole words by lookaround, not \b: a keyword ending in punctuation (c++, c#) never matched with \b
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(k.lower()) for k in keywords) + r")(?!\w)")


_PROBLEMS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "finite_number": "must be a finite number",
    "extra_forbidden": "unknown key (check the spelling; see docs/scoring.md)",
    "missing": "required key is missing",
}
#: Type errors: what was expected; the message adds what was given (strict types, see ``_Model``).
_EXPECTED = {
    "float_type": "expected a number",
    "int_type": "expected a whole number",
    "bool_type": "expected true or false",
    "list_type": "expected a list such as [a, b]",
    "dict_type": "expected a mapping",
    "string_type": "expected text",
    "literal_error": "expected {expected}",
}


def _given(value: Any) -> str:
    """What the author wrote, as YAML would show it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (the key has no value)"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value) if isinstance(value, int | float) else str(value)


def _hint(err: Any) -> str:
    value, loc = err.get("input"), err["loc"]
    if not isinstance(value, str) or err["type"] not in ("float_type", "int_type", "bool_type"):
        return ""
    text = value.strip()
    if text.endswith("%") and loc and loc[-1] == "warning_fraction":
        try:
            return f" (write a fraction: {text} is {float(text[:-1]) / 100:g})"
        except ValueError:
            return ""
    if err["type"] == "bool_type":
        return " (write true or false, without quotes)"
    return " (write the number without quotes or units)"


def _problem(err: Any) -> str:
    kind = err["type"]
    if kind == "model_type":  # a scalar or list where a section or a rule belongs
        rule = err.get("ctx", {}).get("class_name") == "RuleSpec"
        return (
            "expected a mapping"
            + (" (or a bare number of points)" if rule else "")
            + (f", got {_given(err.get('input'))}")
        )
    if kind in _EXPECTED:
        expected = _EXPECTED[kind].format(**err.get("ctx", {}))
        return f"{expected}, got {_given(err.get('input'))}{_hint(err)}"
    template = _PROBLEMS.get(kind)
    if template is not None:
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in err.get("ctx", {}).items()}
        return template.format(**ctx)
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _dotted(loc: tuple[Any, ...]) -> str:
    # pydantic adds the tried union member / function name to locations; drop those internal segments
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in ("function-after",)))]
    return ".".join(parts)


def _line(source: str, err: Any) -> str:
    path, problem = _dotted(tuple(err["loc"])), _problem(err)
    if problem.startswith((".", "[")):  # a validator named a key below its model (see ``_at``)
        sub, _, problem = problem.partition(": ")
        path = path + sub if path else sub.lstrip(".")
    return f"{source}: {path + ': ' if path else ''}{problem}"


def rules_from_mapping(data: Any, source: str = "rules.yaml") -> Rules:
    """Validate an already parsed rules document; errors name ``source`` and each bad key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        raise RulesError("\n".join(_line(source, err) for err in exc.errors())) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: PyYAML's message spans lines and quotes the file as "<unicode string>" with a caret."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        context = getattr(exc, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return f"{where}: {problem}" + (f" ({context})" if context else "")
    return " ".join(str(exc).split())


def load_rules(path: Path | str | None = None) -> Rules:
    """Load and validate the rules YAML (``Settings.rules``; None = the shipped ``rules.default.yaml``)."""
    path = Path(path) if path is not None else DEFAULT_RULES_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rules file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RulesError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_RulesLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise RulesError(f"{path.name}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:  # the file is the whole rule set: an empty one would score nothing, silently
        raise RulesError(
            f"{path.name}: the file is empty; start from a copy of {DEFAULT_RULES_PATH.name} and edit it"
        )
    return rules_from_mapping(data, source=path.name)


class _RulesLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one, silently), and
    reads scalars as YAML 1.2 does: only true/false are booleans (YAML 1.1 made the country key ``NO``
    false, and yes/no/on/off too) and ``1e6`` is a number (YAML 1.1 wants ``1.0e+6``, else a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {key!r} is given twice (line {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_RulesLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RulesLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_RulesLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
