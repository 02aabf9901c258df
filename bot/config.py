"""Configuration: one TOML file plus environment overrides (contract of DESIGN.md).

Every key can be overridden by ``SUPPORTBOT_<SECTION>__<KEY>``. Secrets are ``SecretStr`` so
they never show in a repr, a log line or an error message. Errors name the key and the
problem, never the value.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

CONFIG_ENV_VAR = "SUPPORTBOT_CONFIG"
DEFAULT_CONFIG_FILE = "supportbot.toml"
ALL_LANGUAGES = ("en", "zh", "ru", "es", "fr", "de", "pt", "ar")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*$")
# A longer duration is a typo, and one near timedelta's limit would overflow the first
# time it is added to a date.
MAX_DURATION = timedelta(days=36_500)
_INTERVAL = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class ConfigError(Exception):
    """A configuration problem; the message names the key and the problem, never a value."""


def parse_duration(text: str) -> timedelta:
    """Parse "2h", "30m", "1d 4h", "90min" into a timedelta."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise ValueError(f"not a duration like '2h', '30m' or '1d 4h': {text!r}")
    duration: timedelta | None
    try:
        days, hours, minutes = (int(g) if g else 0 for g in match.groups())
        duration = timedelta(days=days, hours=hours, minutes=minutes)
    except (OverflowError, ValueError):  # past timedelta's billion days, or 4,300 digits
        duration = None
    if duration is None or duration > MAX_DURATION:
        raise ValueError(f"a duration of at most {MAX_DURATION.days} days (100 years) is "
                         "expected")
    return duration


class Section(BaseModel):
    """A config section: unknown keys are errors, so typos do not go unnoticed."""

    model_config = ConfigDict(extra="forbid")


class CompanySettings(Section):
    name: str = "Evergreen Flooring"
    emergency_contact: str = "+86 519 8888 0000"
    support_email: str = "support@evergreen-flooring.example"


class HoursSettings(Section):
    timezone: str = "Asia/Shanghai"
    weekly: dict[str, list[str]] = Field(
        default_factory=lambda: {day: ["09:00-18:00"] for day in WEEKDAYS[:5]}
    )
    holidays_country: str | None = "CN"
    extra_closed: list[date] = Field(default_factory=list)
    extra_open: list[date] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r}") from None
        return value

    @field_validator("weekly")
    @classmethod
    def _valid_week(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        normalised: dict[str, list[str]] = {}
        for day, intervals in value.items():
            key = day.strip().lower()[:3]
            if key not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r} (use mon, tue, ... sun)")
            for interval in intervals:
                if not _INTERVAL.match(interval.replace(" ", "")):
                    raise ValueError(f"{day}: interval {interval!r} is not like '09:00-18:00'")
            normalised[key] = [i.replace(" ", "") for i in intervals]
        return normalised


class SlaSettings(Section):
    """Response-time targets in working time (SPEC §6)."""

    first_response: timedelta = timedelta(hours=2)
    first_response_urgent: timedelta = timedelta(minutes=30)
    inquiry_ack: timedelta = timedelta(hours=1)
    complaint_solution: timedelta = timedelta(hours=24)
    technical_contact: timedelta = timedelta(hours=2)
    order_confirmation: timedelta = timedelta(hours=24)
    delivery_followup: timedelta = timedelta(hours=48)
    change_notice: timedelta = timedelta(hours=4)
    unclaimed_handoff: timedelta = timedelta(minutes=30)
    next_response: timedelta = timedelta(hours=2)
    warn_at: float = Field(default=0.8, gt=0, lt=1)
    # First human response by intent of the hand-off (urgent messages keep the urgent target),
    # e.g. {quote_request = "1h"}.
    first_response_by_intent: dict[str, timedelta] = Field(default_factory=dict)

    @field_validator(
        "first_response", "first_response_urgent", "inquiry_ack", "complaint_solution",
        "technical_contact", "order_confirmation", "delivery_followup", "change_notice",
        "unclaimed_handoff", "next_response", mode="before",
    )
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("first_response_by_intent", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: parse_duration(v) if isinstance(v, str) else v for k, v in value.items()}
        return value


class LanguagesSettings(Section):
    supported: list[str] = Field(default_factory=lambda: list(ALL_LANGUAGES))
    default: str = "en"
    detector: Literal["lingua", "langdetect"] = "lingua"

    @field_validator("supported")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        unknown = [code for code in value if code not in ALL_LANGUAGES]
        if unknown:
            raise ValueError(f"unsupported language(s) {unknown}; choose from {list(ALL_LANGUAGES)}")
        if not value:
            raise ValueError("at least one language is required")
        return value

    @field_validator("default")
    @classmethod
    def _default_known(cls, value: str) -> str:
        if value not in ALL_LANGUAGES:
            raise ValueError(f"unsupported language {value!r}; choose from {list(ALL_LANGUAGES)}")
        return value


class DatabaseSettings(Section):
    url: str = "sqlite+aiosqlite:///supportbot.db"
    echo: bool = False
    # PostgreSQL: connections serve keeps open (and up to 5 more for a burst). Each webhook
    # being answered holds one for its transaction: with fewer than the requests in
    # flight, connections were opened and closed under load (a connect and every
    # statement prepared again each time).
    pool_size: int = Field(default=20, ge=1, le=500)

    @field_validator("url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        """Accept the usual sync URLs and pick the async driver the app runs on."""
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL like 'sqlite:///file.db' or "
                             "'postgresql://user@host/db'") from None
        backend = url.get_backend_name()
        if backend == "sqlite":
            url = url.set(drivername="sqlite+aiosqlite")
        elif backend in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+asyncpg")
        else:
            raise ValueError(f"unsupported database {backend!r}; use sqlite or postgresql")
        return url.render_as_string(hide_password=False)


class TelegramSettings(Section):
    token: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    mode: Literal["webhook", "polling"] = "webhook"
    api_base_url: str = "https://api.telegram.org"
    public_url: str | None = None

    @property
    def enabled(self) -> bool:
        return self.token is not None

    @model_validator(mode="after")
    def _secret_for_webhook(self) -> TelegramSettings:
        if self.token is not None and self.mode == "webhook" and self.webhook_secret is None:
            raise ValueError("webhook_secret is required with mode = \"webhook\" (Telegram "
                             "sends it with every update; updates without it are refused)")
        if self.webhook_secret is not None and not re.fullmatch(
                r"[A-Za-z0-9_-]{1,256}", self.webhook_secret.get_secret_value()):
            raise ValueError("webhook_secret: 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return self


class SlackSettings(Section):
    bot_token: SecretStr | None = None
    signing_secret: SecretStr | None = None
    agents_channel: str = "#support"
    supervisors_channel: str = "#support-supervisors"
    mode: Literal["http", "socket"] = "http"
    app_token: SecretStr | None = None
    api_base_url: str = "https://slack.com/api/"

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None

    @model_validator(mode="after")
    def _credentials_for_mode(self) -> SlackSettings:
        if self.bot_token is None:
            return self
        if self.mode == "http" and self.signing_secret is None:
            raise ValueError("signing_secret is required with mode = \"http\" (Slack signs "
                             "every request; unsigned ones are refused)")
        if self.mode == "socket" and self.app_token is None:
            raise ValueError("app_token (xapp-...) is required with mode = \"socket\"")
        return self


class AgentSettings(Section):
    """One support agent, ``[agents.<ref>]``; the ref is what imports (account_manager)
    and replay scenarios use. Agents who are not listed still work from Slack: they are
    recorded under their Slack user id the first time they act."""

    name: str | None = None
    slack_user_id: str | None = None
    email: str | None = None
    supervisor: bool = False
    # For the dashboard login: an Argon2 hash made by `supportbot password-hash`.
    password_hash: SecretStr | None = None

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("$argon2"):
            raise ValueError("not an Argon2 hash; make one with 'supportbot password-hash'")
        return value


class WechatSettings(Section):
    token: SecretStr | None = None
    app_id: str | None = None
    app_secret: SecretStr | None = None
    aes_key: SecretStr | None = None  # the EncodingAESKey: safe mode (encrypted messages)
    api_base_url: str = "https://api.weixin.qq.com"
    # WeChat waits 5 s for the callback's answer; a reply ready by then goes back in the
    # response itself (a "passive" reply), later ones through the customer-service API.
    reply_window_seconds: float = Field(default=4.5, gt=0, lt=5)

    @property
    def enabled(self) -> bool:
        return self.token is not None

    @model_validator(mode="after")
    def _complete(self) -> WechatSettings:
        if self.token is None:
            return self
        if not self.app_id or self.app_secret is None:
            raise ValueError("app_id and app_secret are required with a token (replies after "
                             "the 5-second window go through the customer-service API)")
        if self.aes_key is not None and len(self.aes_key.get_secret_value()) != 43:
            raise ValueError("aes_key: the EncodingAESKey has exactly 43 characters")
        return self


class WebSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # Signs the dashboard's login cookie. Unset, each process makes a random one: logins
    # then end at a restart and do not carry across several processes.
    session_secret: SecretStr | None = None
    session_hours: int = Field(default=12, ge=1, le=24 * 30)
    # Mark the login cookie Secure (sent over HTTPS only). Turn on behind an HTTPS proxy.
    secure_cookies: bool = False


class LimitsSettings(Section):
    """Guards against abuse; a longer customer message is refused with a clear reply."""

    max_message_chars: int = Field(default=8000, ge=1)
    # Inbound messages stored per chat in any sliding minute; more are refused (one polite
    # notice a minute, the rest dropped silently: bot/rate_limit.py). 0 turns it off.
    messages_per_minute: int = Field(default=20, ge=0)


class OutboxSettings(Section):
    """Delivery retries: exponential backoff with jitter, then the message is marked failed."""

    max_attempts: int = Field(default=10, ge=1)
    base_delay_seconds: float = Field(default=1.0, gt=0)
    max_delay_seconds: float = Field(default=300.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    lease_seconds: float = Field(default=60.0, gt=0)  # a claimed row is retried after this
    # Back-pressure: the backlog stays in the database. serve's dispatcher holds at most one
    # claimed row per send slot (concurrency) per channel, from its claim until its outcome
    # is written, however slow the platform; batch_size caps one claim (and dispatch_due's
    # ids). Replies to different chats are sent concurrently, one chat's in order. A send
    # taking longer than 0.8 × lease_seconds is cut off and retried.
    batch_size: int = Field(default=200, ge=1, le=10_000)
    # Sends in flight per channel (serve). With a platform 50-200 ms away, 16 allow 80-320
    # replies a second per channel (4 allowed 20-80, and held a busy process back: 177-219 vs
    # 289-331 messages a second in the load benchmark); a platform's 429 pauses the channel
    # for its retry_after (bot/outbox.py), so a rate limit is met once, not per send.
    concurrency: int = Field(default=16, ge=1, le=256)


class SchedulerSettings(Section):
    """Periodic jobs (SLA sweep, proactive messages, reports, retention). With PostgreSQL
    only the process holding an advisory lock runs them; the others wait to take over."""

    enabled: bool = True
    sweep_seconds: float = Field(default=60.0, gt=0)
    lock_retry_seconds: float = Field(default=15.0, gt=0)


class ProactiveSettings(Section):
    """Messages the bot starts: order alerts, progress notes, follow-ups, surveys."""

    # Customers are not disturbed in these local hours (their timezone, else the company's);
    # a message due then waits for the end of the quiet period.
    quiet_hours: str = "21:00-08:00"
    respect_quiet_hours: bool = True
    progress_every: timedelta = timedelta(days=7)
    delay_threshold: timedelta = timedelta(hours=48)
    survey: bool = True

    @field_validator("progress_every", "delay_threshold", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("quiet_hours")
    @classmethod
    def _interval(cls, value: str) -> str:
        if value and not re.fullmatch(r"\d{2}:\d{2}-\d{2}:\d{2}", value):
            raise ValueError(f"expected HH:MM-HH:MM, got {value!r}")
        return value


class RetentionSettings(Section):
    """Personal data older than this is purged by a daily job (SPEC §7: 3 years)."""

    personal_data_days: int = Field(default=3 * 365, ge=1)


class FlowSettings(Section):
    """Multi-turn flows (quote, verification, complaint) and ownership checks."""

    timeout: timedelta = timedelta(minutes=30)
    verify_attempts: int = Field(default=3, ge=1)
    verify_lock: timedelta = timedelta(minutes=30)

    @field_validator("timeout", "verify_lock", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


class AfterHoursSettings(Section):
    """The after-hours notice: one per off-hours period per conversation."""

    enabled: bool = True
    # No notice when an agent answered the conversation this recently.
    agent_recent: timedelta = timedelta(minutes=10)

    @field_validator("agent_recent", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


class KnowledgeSettings(Section):
    """Where the knowledge base lives; empty means the bundled demo knowledge."""

    path: Path | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SUPPORTBOT_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    company: CompanySettings = Field(default_factory=CompanySettings)
    hours: HoursSettings = Field(default_factory=HoursSettings)
    sla: SlaSettings = Field(default_factory=SlaSettings)
    languages: LanguagesSettings = Field(default_factory=LanguagesSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    wechat: WechatSettings = Field(default_factory=WechatSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    flows: FlowSettings = Field(default_factory=FlowSettings)
    after_hours: AfterHoursSettings = Field(default_factory=AfterHoursSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    proactive: ProactiveSettings = Field(default_factory=ProactiveSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    # More calendars (per region or team), each like [hours]: [calendars.europe] ...
    calendars: dict[str, HoursSettings] = Field(default_factory=dict)
    agents: dict[str, AgentSettings] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: explicit arguments, then the environment, then the file.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{key}: {message}"


def resolve_config_path(path: str | os.PathLike[str] | None) -> Path | None:
    """The file named by --config, else $SUPPORTBOT_CONFIG, else ./supportbot.toml if present."""
    if path:
        return Path(path)
    if os.environ.get(CONFIG_ENV_VAR):
        return Path(os.environ[CONFIG_ENV_VAR])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings, raising ConfigError with one line per problem."""
    config_path = resolve_config_path(path)
    if config_path is not None:
        try:
            with config_path.open("rb") as handle:
                tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{config_path}: config file not found") from None
        except (PermissionError, IsADirectoryError) as exc:
            raise ConfigError(f"{config_path}: cannot read config file ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{config_path}: not valid UTF-8") from None
    loaded = type(
        "LoadedSettings",
        (Settings,),
        {"model_config": {**Settings.model_config, "toml_file": config_path}},
    )
    # SUPPORTBOT_CONFIG names the file; it is not a settings key.
    saved = os.environ.pop(CONFIG_ENV_VAR, None)
    try:
        return loaded(**overrides)
    except ValidationError as exc:
        where = f"{config_path}: " if config_path else ""
        problems = "\n".join(f"  {where}{_describe(e)}" for e in exc.errors())
        raise ConfigError(f"invalid configuration:\n{problems}") from None
    finally:
        if saved is not None:
            os.environ[CONFIG_ENV_VAR] = saved
