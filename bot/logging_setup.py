"""Logging to stderr, with every configured secret masked as defence in depth."""

from __future__ import annotations

import logging

from pydantic import SecretStr

from bot.config import Settings


class SecretFilter(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(secret in message for secret in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, "***")
                record.msg, record.args = message, None
        return True


def configured_secrets(settings: Settings) -> list[str]:
    secrets = []
    for section in (settings.telegram, settings.slack, settings.wechat):
        for value in section.__dict__.values():
            if isinstance(value, SecretStr):
                secrets.append(value.get_secret_value())
    return secrets


def configure_logging(level: str, settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(configured_secrets(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
