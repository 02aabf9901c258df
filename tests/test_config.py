from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, parse_duration
from bot.logging_setup import SecretFilter


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "supportbot.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_embedded_default_needs_no_file() -> None:
    settings = load_settings()
    assert settings.database.url == "sqlite+aiosqlite:///supportbot.db"
    assert (settings.web.host, settings.web.port) == ("127.0.0.1", 8080)
    assert settings.hours.timezone == "Asia/Shanghai"
    assert settings.hours.holidays_country == "CN"
    assert settings.hours.weekly == {d: ["09:00-18:00"] for d in ("mon", "tue", "wed", "thu", "fri")}
    assert settings.languages.supported == ["en", "zh", "ru", "es", "fr", "de", "pt", "ar"]
    assert settings.sla.first_response == timedelta(hours=2)
    assert not settings.telegram.enabled and not settings.slack.enabled


def test_file_and_environment_with_environment_winning(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, """
[company]
name = "Acme Steel"
[web]
port = 9000
[hours]
timezone = "Europe/Berlin"
weekly = { Monday = ["08:00-12:00", "13:00-17:00"], sat = ["09:00-12:00"] }
[sla]
first_response = "1h 30m"
[database]
url = "postgresql://app:pw@db.internal/support"
""")
    monkeypatch.setenv("SUPPORTBOT_WEB__PORT", "9100")
    settings = load_settings(path)
    assert settings.company.name == "Acme Steel"
    assert settings.web.port == 9100
    assert settings.hours.weekly == {"mon": ["08:00-12:00", "13:00-17:00"], "sat": ["09:00-12:00"]}
    assert settings.sla.first_response == timedelta(hours=1, minutes=30)
    assert settings.database.url == "postgresql+asyncpg://app:pw@db.internal/support"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[company]\nname = "From Env"\n')
    monkeypatch.setenv("SUPPORTBOT_CONFIG", str(path))
    assert load_settings().company.name == "From Env"


@pytest.mark.parametrize("text, expected", [
    ("[company\nname = 1", "not valid TOML"),
    ("[company]\nnmae = \"x\"", "company.nmae: unknown key"),
    ("[bogus]\nx = 1", "bogus: unknown key"),
    ("[hours]\ntimezone = \"Mars/Base\"", "hours.timezone: unknown IANA timezone"),
    ("[hours]\nweekly = { mon = [\"9-18\"] }", "hours.weekly: mon: interval '9-18'"),
    ("[hours]\nweekly = { funday = [\"09:00-18:00\"] }", "unknown weekday 'funday'"),
    ("[sla]\nfirst_response = \"soon\"", "sla.first_response: not a duration"),
    ("[web]\nport = 70000", "web.port: Input should be less than or equal to 65535"),
    ("[languages]\nsupported = [\"en\", \"jp\"]", "languages.supported: unsupported language"),
    ("[database]\nurl = \"mysql://x/y\"", "database.url: unsupported database 'mysql'"),
    ("[telegram]\nmode = \"carrier-pigeon\"", "telegram.mode"),
])
def test_errors_name_the_key_and_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[company]\nname = "Caf\xe9"\n')
    with pytest.raises(ConfigError, match="not valid"):
        load_settings(bad)


def test_secrets_never_appear_in_errors_or_reprs(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.toml"
    path.write_text('[telegram]\ntoken = "123456:SUPERSECRET"\nmode = "nope"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "SUPERSECRET" not in str(info.value)
    monkeypatch.setenv("SUPPORTBOT_SLACK__SIGNING_SECRET", "TOPSECRETSIGN")
    monkeypatch.setenv("SUPPORTBOT_SLACK__BOT_TOKEN", "xoxb-TOPSECRET")
    settings = load_settings()
    assert "TOPSECRET" not in repr(settings) and "TOPSECRET" not in str(settings.model_dump())
    assert settings.slack.signing_secret is not None
    assert settings.slack.signing_secret.get_secret_value() == "TOPSECRETSIGN"


def test_log_filter_masks_configured_secrets() -> None:
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "calling %s/bot%s/getMe",
                               ("https://api.example", "123:TOKENVALUE"), None)
    SecretFilter(["123:TOKENVALUE"]).filter(record)
    assert record.getMessage() == "calling https://api.example/bot***/getMe"


@pytest.mark.parametrize("text, minutes", [("2h", 120), ("30m", 30), ("1d 4h", 1680),
                                           ("90min", 90), ("1h30m", 90)])
def test_durations(text: str, minutes: int) -> None:
    assert parse_duration(text) == timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["", "2 hours", "h", "-5m", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["36501d", "99999999999999999d", "9999999999999999999999h",
                                  "999999999d 48h", "1" * 5000 + "m"])
def test_absurdly_long_durations_are_refused(text: str) -> None:
    assert parse_duration("36500d") == timedelta(days=36_500)  # 100 years is the most
    with pytest.raises(ValueError, match="at most 36500 days"):
        parse_duration(text)


def test_an_absurdly_long_duration_in_the_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "supportbot.toml"
    path.write_text('[sla]\nfirst_response = "99999999999999999d"\n')
    with pytest.raises(ConfigError, match=r"sla\.first_response: a duration of at most"):
        load_settings(path)


async def test_the_postgresql_pool_holds_as_many_connections_as_configured() -> None:
    from bot.db.database import POOL_OVERFLOW, Database

    assert load_settings(None).database.pool_size == 20
    settings = load_settings(None, database={
        "url": "postgresql://postgres@127.0.0.1:5432/supportbot", "pool_size": 32})
    db = Database(settings.database.url, pool_size=settings.database.pool_size)
    try:  # nothing connects until used
        pool = db.engine.sync_engine.pool
        assert (pool.size(), pool._max_overflow) == (32, POOL_OVERFLOW)  # type: ignore[attr-defined]
    finally:
        await db.dispose()
    with pytest.raises(ConfigError, match="pool_size"):
        load_settings(None, database={"pool_size": 0})
