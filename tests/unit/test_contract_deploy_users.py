"""DESIGN §9: ``deploy/`` ships ClickHouse users with a **read-only analyst role**.

Why a test: ``deploy/clickhouse/users.sql`` is applied by an operator, never by a test run, so nothing
checked that the analyst role stays read-only; a ``GRANT INSERT`` or ``ALTER`` added to it for a one-off fix
would give every analyst (and every dashboard using the role) write access to the analytics tables, and the
``leadpulse sql``/``report`` read-only guarantees (docs/clickhouse.md) rest on that role on a server.
Read as text, statement by statement, as an operator's ``clickhouse-client --multiquery`` would run it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

USERS_SQL = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse" / "users.sql"


def statements() -> list[str]:
    """Every statement of users.sql on one line, comments left out."""
    text = "\n".join(line.split("--", 1)[0] for line in USERS_SQL.read_text().splitlines())
    return [" ".join(s.split()) for s in text.split(";") if s.strip()]


def analyst_roles() -> set[str]:
    created = (re.match(r"CREATE ROLE (?:IF NOT EXISTS )?(\w+)", s, re.I) for s in statements())
    return {m.group(1) for m in created if m and "analyst" in m.group(1).lower()}


def test_there_is_an_analyst_role_and_a_user_that_has_it_by_default() -> None:
    roles = analyst_roles()
    assert roles, "no CREATE ROLE ... analyst in users.sql"
    users = [s for s in statements() if re.match(r"CREATE USER ", s, re.I)]
    assert any(re.search(rf"DEFAULT ROLE {role}\b", s, re.I) for s in users for role in roles), users


def test_the_analyst_role_is_granted_select_on_leadpulse_and_nothing_else() -> None:
    roles = analyst_roles()
    grants = [
        s
        for s in statements()
        if re.match(r"GRANT ", s, re.I) and any(re.search(rf"\bTO {role}\b", s, re.I) for role in roles)
    ]
    assert grants, "the analyst role is granted nothing"
    for grant in grants:
        privileges, on = re.match(r"GRANT (.+?) ON (\S+)", grant, re.I).groups()  # type: ignore[union-attr]
        assert [p.strip().upper() for p in privileges.split(",")] == ["SELECT"], grant
        assert on.startswith("leadpulse."), grant  # database leadpulse (DESIGN §7), never default


def test_the_analyst_profile_makes_every_session_read_only() -> None:
    """``readonly`` 1 or 2 refuses writes and DDL even for a privilege granted later by mistake."""
    roles = analyst_roles()
    profiles = [
        s
        for s in statements()
        if re.match(r"CREATE SETTINGS PROFILE ", s, re.I)
        and any(re.search(rf"\bTO {role}\b", s, re.I) for role in roles)
    ]
    assert profiles, "no settings profile applies to the analyst role"
    assert all(re.search(r"\breadonly = [12]\b", s) for s in profiles), profiles
