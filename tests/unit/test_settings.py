"""Settings are validated at start-up and errors name the LEADPULSE_* variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_defaults_start_the_embedded_broker_and_chdb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LEADPULSE_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("LEADPULSE_CLICKHOUSE_DSN", raising=False)
    settings = load_settings(data_dir=tmp_path)
    assert settings.embedded_broker
    assert settings.dsn == f"chdb://{(tmp_path / 'clickhouse').resolve()}"


def test_env_vars_are_read_with_the_leadpulse_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADPULSE_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("LEADPULSE_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("LEADPULSE_CLICKHOUSE_DSN", "http://ch:8123")
    settings = load_settings()
    assert not settings.embedded_broker
    assert settings.topic("leads.hot") == "prod.leads.hot"
    assert not settings.embedded_clickhouse


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("LEADPULSE_WEB_PORT", "80x"),
        ("LEADPULSE_KAFKA_BOOTSTRAP", "no-port-here"),
        ("LEADPULSE_CLICKHOUSE_DSN", "mysql://x"),
        ("LEADPULSE_TOPIC_PREFIX", "bad prefix!"),
        ("LEADPULSE_LOG_LEVEL", "LOUD"),
        ("LEADPULSE_TOPIC_REPLICATION_FACTOR", "0"),
        ("LEADPULSE_TOPIC_REPLICATION_FACTOR", "-2"),
        ("LEADPULSE_COLLECTOR_STOP_GRACE_S", "-1"),
        ("LEADPULSE_COLLECTOR_STOP_GRACE_S", "121"),
    ],
)
def test_a_wrong_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        load_settings()


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.topic_prefix = "x"  # type: ignore[misc]


def test_secrets_do_not_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADPULSE_KAFKA_SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("LEADPULSE_WRITE_KEYS", '{"site": "wk-very-secret"}')
    settings = load_settings()
    assert "hunter2-secret" not in repr(settings) and "hunter2-secret" not in str(settings.model_dump())
    assert "wk-very-secret" not in repr(settings)
    assert settings.write_keys["site"].get_secret_value() == "wk-very-secret"


def test_crm_sources_default_to_write_keys_named_crm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADPULSE_CRM_WRITE_KEY_SOURCES", raising=False)
    monkeypatch.setenv("LEADPULSE_WRITE_KEYS", '{"web": "k1", "crm": "k2", "CRM-hubspot": "k3"}')
    assert load_settings().crm_sources == frozenset({"crm", "CRM-hubspot"})


def test_explicit_crm_sources_replace_the_naming_convention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADPULSE_WRITE_KEYS", '{"web": "k1", "crm": "k2", "backoffice": "k3"}')
    monkeypatch.setenv("LEADPULSE_CRM_WRITE_KEY_SOURCES", '["backoffice"]')
    assert load_settings().crm_sources == frozenset({"backoffice"})
    monkeypatch.setenv("LEADPULSE_CRM_WRITE_KEY_SOURCES", "[]")
    assert load_settings().crm_sources == frozenset()  # nobody may send sales_activity


def test_a_crm_source_without_a_write_key_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADPULSE_WRITE_KEYS", '{"web": "k1", "crm": "k2"}')
    monkeypatch.setenv("LEADPULSE_CRM_WRITE_KEY_SOURCES", '["crm", "salesforce"]')
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "LEADPULSE_CRM_WRITE_KEY_SOURCES" in message and "'salesforce'" in message
    assert "'crm'" not in message.split("(sources")[0]  # only the unknown one is named
    assert "k1" not in message and "k2" not in message  # key values never shown


def test_one_write_key_for_two_sources_is_refused_naming_the_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector takes the last source whose key matches: with the page's (public) key pasted as the
    CRM's too, every visitor could send sales activities and set a lead's flags, owner and segment. An empty
    key identifies nobody (a request without a key is refused), so it is a mistake too."""
    monkeypatch.delenv("LEADPULSE_CRM_WRITE_KEY_SOURCES", raising=False)
    monkeypatch.setenv("LEADPULSE_WRITE_KEYS", '{"web": "wk-shared-1234", "crm": "wk-shared-1234"}')
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "LEADPULSE_WRITE_KEYS" in message and "'web' and 'crm' have the same key" in message
    assert "wk-shared-1234" not in message
    monkeypatch.setenv("LEADPULSE_WRITE_KEYS", '{"web": "k1", "crm": " "}')
    with pytest.raises(SettingsError, match=r"LEADPULSE_WRITE_KEYS: .*'crm' has an empty key"):
        load_settings()


def test_crm_sources_are_not_checked_by_processes_without_write_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LEADPULSE_WRITE_KEYS", raising=False)
    monkeypatch.setenv("LEADPULSE_CRM_WRITE_KEY_SOURCES", '["salesforce"]')
    assert load_settings().crm_sources == frozenset({"salesforce"})


def test_a_password_in_the_dsn_is_masked_wherever_the_dsn_is_shown() -> None:
    settings = load_settings(clickhouse_dsn="https://analyst:s3cr3t-pw@ch.example:8443/leadpulse")
    assert settings.shown_dsn == "https://analyst:***@ch.example:8443/leadpulse"
    assert load_settings(clickhouse_dsn="http://ch.example:8123").shown_dsn == "http://ch.example:8123"


def test_a_bad_dsn_scheme_is_named_without_echoing_the_dsn() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(clickhouse_dsn="mysql://root:s3cr3t-pw@db:3306")
    assert "LEADPULSE_CLICKHOUSE_DSN" in str(err.value) and "'mysql'" in str(err.value)
    assert "s3cr3t-pw" not in str(err.value)


def test_write_keys_that_are_not_json_name_the_variable_not_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADPULSE_WRITE_KEYS", '{site: "k-0123456789-secret"}')
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "LEADPULSE_WRITE_KEYS" in str(err.value) and "not valid JSON" in str(err.value)
    assert "k-0123456789-secret" not in str(err.value)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (
            "clickhouse_dsn",
            "http://u:pw-7f3a@127.0.0.1:notaport/",
            "LEADPULSE_CLICKHOUSE_DSN: .*port is not a number",
        ),
        (
            "webhook_urls",
            ["ftp://127.0.0.1/TOKEN888"],
            r"LEADPULSE_WEBHOOK_URLS: .*\[0\]: .*got scheme 'ftp'",
        ),
        ("webhook_urls", ["hooks.example.com/TOKEN888"], r"\[0\]: expected an http:// or https:// URL"),
        (
            "slack_webhook_urls",
            ["https://hooks.slack.com/services/ok", "http://bad host/TOKEN888"],
            r"LEADPULSE_SLACK_WEBHOOK_URLS: .*\[1\]: no valid host name",
        ),
        ("email_hash_key", "", "LEADPULSE_EMAIL_HASH_KEY: .*at least 16 characters"),
    ],
)
def test_urls_and_keys_are_checked_at_start_without_echoing_them(
    setting: str, value: object, message: str
) -> None:
    """Found by an audit: a malformed DSN crashed the CLI with a traceback when shown; a webhook URL that
    could never work was accepted and failed (and was retried) at the first hot lead; an empty email key
    made the 'keyed' hashes plain SHA-256."""
    with pytest.raises(SettingsError, match=message) as info:
        load_settings(**{setting: value})
    for secret in ("pw-7f3a", "TOKEN888"):
        assert secret not in str(info.value)


def test_the_shipped_email_hash_key_is_recognised_as_the_default() -> None:
    assert load_settings().default_email_hash_key
    assert not load_settings(email_hash_key="a-random-key-of-enough-length").default_email_hash_key
