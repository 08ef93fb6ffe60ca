"""The scoring, stage and SLA rules: one YAML file, validated at start, compiled once into lookup dicts.

Why compile: ``step`` runs per event at >15k events/s, so every rule lookup must be one dict access and every
half-life a precomputed decay constant, never a walk over the YAML tree. Why errors carry the key path:
a sales-ops user edits this file by hand and must read *which* key is wrong
(``rules.yaml: scoring.page_category.pricing.half_life_days: must be >= 0.0416667 (1 hour)``), not a pydantic
location tuple.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from agents.rules_sections import (
    MAX_DAYS,
    DisqualifyRules,
    FitRules,
    RecycleRules,
    RulesModel,
    ScoringRules,
    SlaRules,
    StageRules,
    StateRules,
    whole_words,
)

DEFAULT_RULES_PATH = Path(__file__).resolve().parent / "rules.default.yaml"
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
LN2 = math.log(2.0)


class RulesError(Exception):
    """The rules file is unreadable or invalid; the message names the file and each bad key path."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One scoring rule ready for the hot path: ``k`` = ln 2 / half-life in ms, so decay = exp(-k·Δt)."""

    name: str
    points: float
    k: float
    half_life_ms: float
    daily_cap: int | None
    immediate_mql: bool


class Rules(RulesModel):
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
        "decay_k",
        "dedup_window_ms",
        "email_links",
        "late_by_arrival",
        "late_window_ms",
        "sizes",
        "support_points",
        "tables",
        "title_dq",
        "title_dq_exceptions",
        "title_fit",
        "title_support",
        "title_support_exceptions",
    )

    def __init__(self) -> None:
        self.by_name: dict[str, CompiledRule] = {}
        self.decay_k: dict[str, float] = {}  # rule name -> k: the decay loops' one lookup per entry
        self.tables: dict[str, dict[str, CompiledRule]] = {}
        self.email_links: tuple[tuple[str, CompiledRule], ...] = ()
        self.title_dq: re.Pattern[str] | None = None
        self.title_dq_exceptions: re.Pattern[str] | None = None  # disqualify.title_exceptions
        self.title_fit: tuple[tuple[re.Pattern[str], float], ...] = ()
        self.title_support: tuple[re.Pattern[str], ...] = ()  # fit.support_roles.keywords, one per keyword
        self.title_support_exceptions: re.Pattern[str] | None = None  # fit.support_roles.exceptions
        self.support_points = 0.0
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
                c.decay_k[rule.name] = rule.k
            c.tables[table] = compiled
        c.email_links = tuple(c.tables["email_link"].items())
        if rules.disqualify.title_keywords:
            c.title_dq = whole_words(rules.disqualify.title_keywords)
        if rules.disqualify.title_exceptions:
            c.title_dq_exceptions = whole_words(rules.disqualify.title_exceptions)
        c.title_fit = tuple((whole_words([kw]), pts) for kw, pts in rules.fit.title_keywords.items())
        if rules.fit.support_roles is not None:
            c.title_support = tuple(whole_words([kw]) for kw in rules.fit.support_roles.keywords)
            c.support_points = rules.fit.support_roles.points
            if rules.fit.support_roles.exceptions:
                c.title_support_exceptions = whole_words(rules.fit.support_roles.exceptions)
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


_PROBLEMS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "finite_number": "must be a finite number",
    "extra_forbidden": "unknown key (check the spelling; see docs/scoring.md)",
    "missing": "required key is missing",
}
#: Type errors: what was expected; the message adds what was given (strict types, see ``RulesModel``).
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
