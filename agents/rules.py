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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_RULES_PATH = Path(__file__).resolve().parent / "rules.default.yaml"
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
LN2 = math.log(2.0)
#: A recipient in ``sla.escalation``: a role (owner, manager), a team or an address, never blank or padded.
ESCALATION_NAME = re.compile(r"[A-Za-z0-9_.@-]+")


class RulesError(Exception):
    """The rules file is unreadable or invalid; the message names the file and each bad key path."""


class _Model(BaseModel):
    # allow_inf_nan: a `.nan` or `.inf` in the YAML is a float to pydantic; it would score every lead NaN
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class RuleSpec(_Model):
    """Points one matching event earns. A bare number in YAML is shorthand for ``{points: N}``."""

    points: float
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
    default_half_life_days: float = Field(default=30.0, gt=0)
    event_type: dict[str, RuleSpec] = Field(default_factory=dict)
    page_category: dict[str, RuleSpec] = Field(default_factory=dict)
    content_type: dict[str, RuleSpec] = Field(default_factory=dict)
    asset_type: dict[str, RuleSpec] = Field(default_factory=dict)
    email_link: dict[str, RuleSpec] = Field(default_factory=dict)  # substring of link_url, case-insensitive

    @model_validator(mode="after")
    def _known_event_types(self) -> ScoringRules:
        unknown = set(self.event_type) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(
                f"event_type: unknown event type(s) {sorted(unknown)}; known: {list(EVENT_TYPES)}"
            )
        return self


class SizeBand(_Model):
    min: int = Field(ge=0)
    points: float


class FitRules(_Model):
    company_size: list[SizeBand] = Field(default_factory=list)
    industry: dict[str, float] = Field(default_factory=dict)
    seniority: dict[str, float] = Field(default_factory=dict)
    title_keywords: dict[str, float] = Field(default_factory=dict)  # used when seniority is missing
    country: dict[str, float] = Field(default_factory=dict)


class DisqualifyRules(_Model):
    flags: list[str] = Field(default_factory=list)
    email_domains: list[str] = Field(default_factory=list)  # the domain or any subdomain of it
    email_domain_suffixes: list[str] = Field(default_factory=list)  # e.g. .edu, .ac.jp
    title_keywords: list[str] = Field(default_factory=list)  # whole words, case-insensitive


class StageRules(_Model):
    # > 0: at 0 or below every identified lead would be hot at once
    mql_threshold: float = Field(default=100.0, gt=0)
    engaged_event_types: list[str] = Field(default_factory=lambda: ["email_click"])
    engaged_page_categories: list[str] = Field(default_factory=lambda: ["product", "pricing"])
    warm_from: float = Field(default=50.0, ge=0)  # band: cold < warm_from <= warm <= mql_threshold < hot

    @model_validator(mode="after")
    def _known_event_types(self) -> StageRules:
        unknown = [t for t in self.engaged_event_types if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(
                f"engaged_event_types: unknown event type(s) {unknown}; known: {list(EVENT_TYPES)}"
            )
        return self


class FollowUp(_Model):
    hours: float = Field(default=24.0, gt=0)
    immediate_hours: float = Field(default=1.0, gt=0)


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
    rejection_feedback_days: float = Field(default=2.0, gt=0)
    escalation: Escalation = Escalation()


class RecycleRules(_Model):
    mql_not_accepted_days: float = Field(default=14.0, gt=0)
    dormant_customer_days: float = Field(default=180.0, gt=0)


class StateRules(_Model):
    dedup_window_days: float = Field(default=30.0, gt=0)
    max_seen_ids: int = Field(default=2000, ge=10)
    anonymous_buffer: int = Field(default=200, ge=0)
    top_signals: int = Field(default=10, ge=1)
    reasons: int = Field(default=5, ge=1)
    account_window_days: float = Field(default=30.0, gt=0)


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
    late_window_days: float = Field(default=3.0, gt=0)
    # Also late: an event that entered Kafka more than late_window_days after its event_time (a backfill, an
    # import of old CRM history). Off by default: see docs/scoring.md, "Late and stale events".
    late_by_arrival: bool = False
    state: StateRules = StateRules()

    @model_validator(mode="after")
    def _cross_checks(self) -> Rules:
        follow_up_days = self.sla.hot_lead_follow_up.hours / 24
        if self.recycle.mql_not_accepted_days <= follow_up_days:
            raise ValueError(
                "recycle.mql_not_accepted_days: must be longer than sla.hot_lead_follow_up.hours "
                f"({self.recycle.mql_not_accepted_days} days <= {self.sla.hot_lead_follow_up.hours} h)"
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
    return re.compile(r"\b(?:" + "|".join(re.escape(k.lower()) for k in keywords) + r")\b")


_PROBLEMS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "extra_forbidden": "unknown key (check the spelling; see docs/scoring.md)",
    "missing": "required key is missing",
    "model_type": "expected a mapping (or a bare number of points)",
}


def _problem(err: Any) -> str:
    template = _PROBLEMS.get(err["type"])
    if template is not None:
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in err.get("ctx", {}).items()}
        return template.format(**ctx)
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _dotted(loc: tuple[Any, ...]) -> str:
    # pydantic adds the tried union member / function name to locations; drop those internal segments
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in ("function-after",)))]
    return ".".join(parts)


def rules_from_mapping(data: Any, source: str = "rules.yaml") -> Rules:
    """Validate an already parsed rules document; errors name ``source`` and each bad key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            path = _dotted(tuple(err["loc"]))
            lines.append(f"{source}: {path + ': ' if path else ''}{_problem(err)}")
        raise RulesError("\n".join(lines)) from None


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
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise RulesError(f"{path.name}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:  # the file is the whole rule set: an empty one would score nothing, silently
        raise RulesError(
            f"{path.name}: the file is empty; start from a copy of {DEFAULT_RULES_PATH.name} and edit it"
        )
    return rules_from_mapping(data, source=path.name)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
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
