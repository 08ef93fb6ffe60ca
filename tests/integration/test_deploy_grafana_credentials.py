"""Grafana reads ClickHouse as a read-only user, never with the sink's credentials.

A dashboard panel runs whatever SQL a Grafana editor types, so the datasource's user decides what Grafana
can do to the data: compose gave it the sink's writer (``leadpulse`` and ``LEADPULSE_CLICKHOUSE_PASSWORD``),
so a panel query could INSERT into, ALTER or DROP the leadpulse tables. Checked statically, as the other
deploy tests (no docker here): the provisioned datasource, the compose environment that fills it, and the
ClickHouse user it names (deploy/clickhouse/users.d/grafana.xml for compose, users.sql for a cluster).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "leadpulse.yml"
USERS_D = ROOT / "deploy" / "clickhouse" / "users.d"
USERS_SQL = ROOT / "deploy" / "clickhouse" / "users.sql"
#: Settings the grafana-clickhouse-datasource plugin sends with every query (its query timeout): a
#: readonly = 1 user must be allowed to change them, or every panel fails with "Cannot modify ...".
PLUGIN_SETTINGS = {"max_execution_time"}
WRITE = re.compile(r"\b(INSERT|ALTER|CREATE|DROP|TRUNCATE|ALL|DELETE|UPDATE)\b", re.I)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def env_reference(value: str) -> str:
    """``${VAR}`` -> ``VAR`` (how Grafana's provisioning reads a value from its environment)."""
    match = re.fullmatch(r"\$\{(\w+)\}", value.strip())
    assert match, f"not an environment reference: {value!r}"
    return match.group(1)


def compose_value(value: str) -> tuple[str | None, str]:
    """A compose value ``${VAR:-default}`` -> (VAR, default); a plain value -> (None, value)."""
    match = re.fullmatch(r"\$\{(\w+)(?::-([^}]*))?\}", str(value))
    return (match.group(1), match.group(2) or "") if match else (None, str(value))


def clickhouse_datasource() -> dict[str, Any]:
    sources = {s["uid"]: s for s in load_yaml(DATASOURCES)["datasources"]}
    source: dict[str, Any] = sources["clickhouse"]
    assert source["type"] == "grafana-clickhouse-datasource"
    return source


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(ROOT / "docker-compose.yml")
    return data


def test_compose_grafana_reads_clickhouse_with_its_own_credentials_not_the_sinks() -> None:
    services = compose()["services"]
    source = clickhouse_datasource()
    grafana_env = services["grafana"]["environment"]
    user = grafana_env[env_reference(source["jsonData"]["username"])]
    password_var, password_default = compose_value(
        grafana_env[env_reference(source["secureJsonData"]["password"])]
    )
    sink_env = services["sink"]["environment"]
    sink_password_var, sink_password_default = compose_value(sink_env["LEADPULSE_CLICKHOUSE_PASSWORD"])
    writers = {
        sink_env["LEADPULSE_CLICKHOUSE_USER"],
        services["clickhouse"]["environment"]["CLICKHOUSE_USER"],
    }
    assert user not in writers, f"Grafana reads ClickHouse as {user!r}, the sink's writer"
    assert password_var is not None, "Grafana's ClickHouse password is written into docker-compose.yml"
    assert password_var != sink_password_var, f"Grafana gets the sink's password (${{{password_var}}})"
    assert password_default != sink_password_default, "Grafana's default password is the sink's"
    assert not [k for k in grafana_env if k.startswith("LEADPULSE_")], "Grafana gets leadpulse settings"


def test_the_user_grafana_reads_with_is_read_only_and_set_up_by_the_compose_clickhouse() -> None:
    """The user exists on compose's ClickHouse (a users.d file it mounts, its password from the container's
    environment, the same variable Grafana gets) and can only read leadpulse: readonly = 1, with the
    plugin's settings changeable, or readonly = 2."""
    services = compose()["services"]
    source = clickhouse_datasource()
    grafana_env = services["grafana"]["environment"]
    user = grafana_env[env_reference(source["jsonData"]["username"])]
    password_var, _ = compose_value(grafana_env[env_reference(source["secureJsonData"]["password"])])
    clickhouse = services["clickhouse"]
    mounts = {
        v.split(":")[1]: ROOT / v.split(":")[0] for v in clickhouse.get("volumes", []) if v.startswith("./")
    }
    files = {path for target, path in mounts.items() if target.startswith("/etc/clickhouse-server/users.d/")}
    assert files and all(p.parent == USERS_D for p in files), (
        f"compose's ClickHouse mounts no users.d: {mounts}"
    )
    found = [
        (path, element) for path in files for element in ET.parse(path).getroot().findall(f"users/{user}")
    ]
    assert len(found) == 1, f"user {user!r} is not defined once in the mounted users.d files {sorted(files)}"
    path, element = found[0]
    root = ET.parse(path).getroot()
    password = element.find("password")
    assert password is not None and not (password.text or "").strip(), (
        f"{path}: the password must not be here"
    )
    env_name = password.get("from_env")
    assert env_name, f"{path}: the password comes from the container's environment (from_env)"
    given = compose_value(clickhouse["environment"].get(env_name, ""))[0]
    assert given == password_var, (
        f"compose's ClickHouse gets {env_name} from ${{{given}}}, Grafana ${{{password_var}}}"
    )
    grants = [q.text or "" for q in element.findall("grants/query")]
    assert grants and all(re.fullmatch(r"GRANT SELECT ON leadpulse\.\*", g.strip()) for g in grants), grants
    assert element.find("access_management") is None or element.findtext("access_management") == "0"
    profile = root.find(f"profiles/{element.findtext('profile')}")
    assert profile is not None, f"{path}: profile {element.findtext('profile')!r} is not defined"
    readonly = profile.findtext("readonly")
    assert readonly in ("1", "2"), f"{path}: the profile's readonly is {readonly!r}"
    if readonly == "1":
        changeable = {
            c.tag for c in profile.findall("constraints/*") if c.find("changeable_in_readonly") is not None
        }
        assert changeable >= PLUGIN_SETTINGS, (
            f"{path}: the plugin cannot set {sorted(PLUGIN_SETTINGS - changeable)}"
        )


def test_the_cluster_users_give_grafana_a_read_only_user() -> None:
    """deploy/clickhouse/users.sql (a cluster; Kubernetes deploys no Grafana) has the same user: readonly,
    the plugin's settings changeable, SELECT only."""
    sql = re.sub(r"--[^\n]*", "", USERS_SQL.read_text())
    statements = [" ".join(s.split()) for s in sql.split(";") if s.strip()]
    profile = next(
        s for s in statements if s.startswith("CREATE SETTINGS PROFILE IF NOT EXISTS leadpulse_grafana")
    )
    assert "readonly = 1" in profile or "readonly = 2" in profile, profile
    if "readonly = 1" in profile:
        for setting in PLUGIN_SETTINGS:
            assert re.search(rf"{setting} = \d+[^,]*CHANGEABLE_IN_READONLY", profile), profile
    user = next(s for s in statements if s.startswith("CREATE USER IF NOT EXISTS grafana "))
    assert "leadpulse_grafana" in user, user
    grants = [s for s in statements if s.startswith("GRANT ") and re.search(r"\bTO grafana\b", s)]
    assert grants and not any(WRITE.search(g.split(" ON ")[0]) for g in grants), grants
