"""The rules file: shipped defaults, shorthand, compiled lookups and errors that name the key path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agents.rules import DEFAULT_RULES_PATH, RulesError, load_rules, rules_from_mapping

pytestmark = pytest.mark.unit


def test_shipped_defaults_load_with_the_documented_values() -> None:
    rules = load_rules()
    assert rules.stages.mql_threshold == 100
    assert rules.scoring.default_half_life_days == 30
    assert rules.scoring.page_category["pricing"].half_life_days == 14
    assert rules.scoring.asset_type["whitepaper"].half_life_days == 60
    assert rules.scoring.asset_type["demo_request"].half_life_days == 90
    assert {k for k, v in rules.scoring.asset_type.items() if v.immediate_mql} == {
        "catalog",
        "inquiry",
        "demo_request",
    }
    assert rules.sla.hot_lead_follow_up.hours == 24 and rules.sla.hot_lead_follow_up.immediate_hours == 1
    assert rules.sla.warning_fraction == 0.5
    assert rules.late_window_days == 3
    assert set(rules.disqualify.flags) == {"student", "competitor", "retiree"}
    assert (
        ".ac.jp" in rules.disqualify.email_domain_suffixes
        and ".edu" in rules.disqualify.email_domain_suffixes
    )


def test_load_rules_without_a_path_reads_the_shipped_file() -> None:
    assert load_rules(None) == load_rules(DEFAULT_RULES_PATH)


def test_a_bare_number_is_shorthand_for_points() -> None:
    rules = rules_from_mapping({"scoring": {"page_category": {"pricing": 7}}})
    spec = rules.scoring.page_category["pricing"]
    assert spec.points == 7 and spec.half_life_days is None and spec.daily_cap is None


def test_rule_without_half_life_uses_the_default_half_life() -> None:
    rules = rules_from_mapping({"scoring": {"default_half_life_days": 10, "page_category": {"pricing": 7}}})
    rule = rules.rule("page_category.pricing")
    assert rule is not None and rule.half_life_ms == 10 * 86_400_000


def test_zero_half_life_error_names_the_key_path() -> None:
    with pytest.raises(RulesError) as exc:
        rules_from_mapping({"scoring": {"page_category": {"pricing": {"points": 1, "half_life_days": 0}}}})
    assert str(exc.value) == (
        "rules.yaml: scoring.page_category.pricing.half_life_days: must be >= 0.0416667 (1 hour)"
    )


def test_unknown_key_and_wrong_type_are_both_reported() -> None:
    with pytest.raises(RulesError) as exc:
        rules_from_mapping(
            {"scoring": {"pricing_page": 3, "page_category": {"blog": "x"}}}, source="mine.yaml"
        )
    message = str(exc.value)
    assert "mine.yaml: scoring.pricing_page: unknown key" in message
    assert "mine.yaml: scoring.page_category.blog: expected a mapping" in message


def test_warning_fraction_must_be_between_zero_and_one() -> None:
    with pytest.raises(RulesError, match=r"sla\.warning_fraction: must be < 1"):
        rules_from_mapping({"sla": {"warning_fraction": 1.5}})


def test_recycle_window_must_outlast_the_follow_up_sla() -> None:
    with pytest.raises(RulesError, match=r"recycle\.mql_not_accepted_days: must be longer"):
        rules_from_mapping({"recycle": {"mql_not_accepted_days": 0.5}})


def test_unknown_event_type_is_rejected() -> None:
    with pytest.raises(RulesError, match="unknown event type"):
        rules_from_mapping({"scoring": {"event_type": {"page_view": 1}}})


@pytest.mark.parametrize(
    ("stages", "problem"),
    [
        (
            {"engaged_event_types": ["email_clik"]},
            r"stages\.engaged_event_types: unknown event type 'email_clik'",
        ),
        ({"mql_threshold": -5, "warm_from": -10}, r"stages\.mql_threshold: must be > 0"),
        ({"warm_from": -10}, r"stages\.warm_from: must be >= 0"),
    ],
)
def test_stage_rules_that_would_make_everyone_hot_or_never_engaged_are_refused(
    stages: dict[str, object], problem: str
) -> None:
    with pytest.raises(RulesError, match=problem):
        rules_from_mapping({"stages": stages})


def test_an_unknown_rules_version_is_refused() -> None:
    with pytest.raises(RulesError, match=r"version: .*1"):
        rules_from_mapping({"version": 2})


def test_an_empty_rules_file_is_refused_not_read_as_no_rules(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(RulesError, match=r"^empty\.yaml: the file is empty; start from a copy of"):
        load_rules(path)


def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("sla:\n  escalation:\n    breach: [owner]\n    breach: [manager]\n")
    with pytest.raises(
        RulesError, match=r"(?s)^twice\.yaml: not valid YAML: .*the key 'breach' is given twice \(line 4\)"
    ):
        load_rules(path)


def test_missing_file_error_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "absent.yaml")


def test_invalid_yaml_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("scoring: [unclosed\n")
    with pytest.raises(RulesError, match=r"^bad\.yaml: not valid YAML: line 2, column 1: ") as caught:
        load_rules(path)
    # one line, no "<unicode string>" excerpt with a caret (CLI audit: the CLI printed PyYAML's five lines)
    assert "\n" not in str(caught.value) and "unicode string" not in str(caught.value)


def test_error_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("stages:\n  mql_threshold: 100\n  warm_from: 150\n")
    with pytest.raises(
        RulesError, match=r"^rules\.yaml: stages\.warm_from: must be <= stages\.mql_threshold"
    ):
        load_rules(path)


def test_most_specific_rule_wins_and_event_type_is_the_fallback() -> None:
    rules = load_rules()
    assert rules.match("web_visit", {"page_category": "pricing"}).name == "page_category.pricing"  # type: ignore[union-attr]
    assert rules.match("web_visit", {"page_category": "unlisted"}).name == "event_type.web_visit"  # type: ignore[union-attr]
    assert rules.match("web_visit", {"page_category": None}).name == "event_type.web_visit"  # type: ignore[union-attr]
    assert rules.match("download", {"asset_type": "catalog"}).name == "asset_type.catalog"  # type: ignore[union-attr]
    assert rules.match("content_view", {"content_type": "webinar"}).name == "content_type.webinar"  # type: ignore[union-attr]


def test_email_link_rules_match_a_substring_case_insensitively() -> None:
    rules = load_rules()
    rule = rules.match("email_click", {"link_url": "https://x.example/UNSUBSCRIBE?u=1"})
    assert rule is not None and rule.name == "email_link.unsubscribe" and rule.points < 0
    plain = rules.match("email_click", {"link_url": "https://x.example/product"})
    assert plain is not None and plain.name == "event_type.email_click"


def test_event_without_any_rule_scores_nothing() -> None:
    rules = rules_from_mapping({"scoring": {"event_type": {}}})
    assert rules.match("web_visit", {"page_category": "blog"}) is None


def test_rules_are_immutable() -> None:
    rules = load_rules()
    with pytest.raises(Exception, match="frozen"):
        rules.late_window_days = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("ladder", "message"),
    [
        ({"breach": ["owner", ""]}, r"sla\.escalation: .*breach\[1\]: '' is not a recipient name"),
        ({"warning": [" owner"]}, r"sla\.escalation: .*warning\[0\]: ' owner' is not a recipient name"),
        ({"breach": ["owner", "manager", "owner"]}, r"sla\.escalation: .*breach: \['owner'\] named more"),
    ],
)
def test_escalation_names_must_be_routable(ladder: dict[str, list[str]], message: str) -> None:
    with pytest.raises(RulesError, match=message):
        rules_from_mapping({"sla": {"escalation": ladder}})


def test_escalation_accepts_roles_teams_and_addresses() -> None:
    ladder = {"warning": ["owner", "inside-sales"], "breach": ["manager", "sales.ops@example.com"]}
    rules = rules_from_mapping({"sla": {"escalation": ladder}})
    assert rules.sla.escalation.breach == ["manager", "sales.ops@example.com"]


@pytest.mark.parametrize(
    ("yaml_text", "where"),
    [
        ("scoring:\n  event_type:\n    web_visit: .nan\n", "scoring.event_type.web_visit.points"),
        ("scoring:\n  page_category:\n    pricing: {points: .inf}\n", "scoring.page_category.pricing.points"),
        ("stages:\n  mql_threshold: .inf\n", "stages.mql_threshold"),
    ],
)
def test_nan_and_infinite_numbers_are_refused(tmp_path: Path, yaml_text: str, where: str) -> None:
    """YAML's `.nan` / `.inf` are floats: accepted, they scored every lead NaN (rescore showed `nan`)."""
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\n" + yaml_text)
    with pytest.raises(RulesError, match=rf"^rules\.yaml: {re.escape(where)}: .*finite"):
        load_rules(path)


def test_a_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"\xff\xfeversion: 1\n")
    with pytest.raises(RulesError, match=r"rules\.yaml: not a UTF-8 text file"):
        load_rules(path)


@pytest.mark.parametrize(
    ("support_roles", "message"),
    [
        (
            {"points": 2, "keywords": ["assistant to", ""]},
            "fit.support_roles.keywords[1]: '' is blank or has surrounding spaces: it would make every job "
            "title a support role",
        ),
        (
            {"points": 2, "keywords": [" 秘書"]},
            "fit.support_roles.keywords[0]: ' 秘書' is blank or has surrounding spaces",
        ),
        (
            {"points": "2", "keywords": ["intern"]},
            "fit.support_roles.points: expected a number, got the string '2'",
        ),
        ({"keywords": ["intern"]}, "fit.support_roles.points: required key is missing"),
        ({"points": 2}, "fit.support_roles.keywords: required key is missing"),
        (
            {"points": 2, "keywords": "assistant, 秘書"},
            "fit.support_roles.keywords: expected a list such as [a, b], got the string",
        ),
        ({"points": 2, "keywords": [], "marker": ["x"]}, "fit.support_roles.marker: unknown key"),
        (["assistant"], "fit.support_roles: expected a mapping, got a list"),
        (
            {"points": 2, "keywords": ["intern", "Manager"]},
            "fit.support_roles.keywords[1]: 'Manager' is also a title_keywords key, whose points would never "
            "apply",
        ),
        (
            {"points": 2, "keywords": ["intern"], "exceptions": ["intern program", "internship program"]},
            "fit.support_roles.exceptions[1]: 'internship program' contains none of keywords as a whole "
            "word, so it never excepts anything",
        ),
        (
            {"points": 2, "keywords": ["intern"], "exceptions": ["intern program "]},
            "fit.support_roles.exceptions[0]: 'intern program ' is blank or has surrounding spaces",
        ),
        (
            {"points": 2, "keywords": ["intern"], "exceptions": "intern program"},
            "fit.support_roles.exceptions: expected a list such as [a, b], got the string",
        ),
        (
            {"points": 2, "keywords": [], "exceptions": ["intern program"]},
            "fit.support_roles.exceptions[0]: 'intern program' contains none of keywords",
        ),
    ],
)
def test_a_bad_support_roles_section_is_refused_naming_the_key(support_roles: object, message: str) -> None:
    fit = {"title_keywords": {"manager": 8}, "support_roles": support_roles}
    with pytest.raises(RulesError) as exc:
        rules_from_mapping({"fit": fit})
    assert str(exc.value).startswith(f"rules.yaml: {message}"), str(exc.value)


def test_the_shipped_support_roles_cover_english_and_japanese_titles() -> None:
    support = load_rules().fit.support_roles
    assert support is not None and support.points == load_rules().fit.seniority["staff"]
    assert {"assistant to", "executive assistant", "secretary to", "intern"} <= set(support.keywords)
    assert {"秘書", "社長補佐", "インターン"} <= set(support.keywords)
