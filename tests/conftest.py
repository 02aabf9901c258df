"""Shared fixtures: a database per test (SQLite file, or a fresh PostgreSQL database when
SUPPORTBOT_TEST_DATABASE=postgresql), settings isolated from the environment, and a
started service whose channels record what they are asked to send."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from bot.channels.base import Delivery
from bot.clock import ManualClock
from bot.config import Settings, load_settings
from bot.service import Service
from bot.types import InboundMessage

BACKEND = os.environ.get("SUPPORTBOT_TEST_DATABASE", "sqlite")
PG_ADMIN_URL = os.environ.get("SUPPORTBOT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def pytest_report_header(config: pytest.Config) -> str:
    return f"supportbot test database: {BACKEND}"


def _pg_admin_dsn() -> str:
    return make_url(PG_ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)


async def _pg_execute(*statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_admin_dsn(), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def pg_reachable() -> bool:
    try:
        asyncio.run(_pg_execute("SELECT 1"))
    except Exception:  # any failure means the server is not usable for tests
        return False
    return True


@pytest.fixture(scope="session")
def pg_available() -> bool:
    return pg_reachable()


def _new_pg_database() -> str:
    name = f"supportbot_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(f'CREATE DATABASE "{name}"'))
    return name


def _drop_pg_database(name: str) -> None:
    asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test, on the backend this run is for."""
    if BACKEND == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/test.db"
        return
    if not pg_reachable():
        pytest.skip(f"PostgreSQL not reachable at {make_url(PG_ADMIN_URL).render_as_string()}")
    name = _new_pg_database()
    try:
        yield make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg", database=name) \
            .render_as_string(hide_password=False)
    finally:
        _drop_pg_database(name)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database whatever the backend of the run (concurrency proofs)."""
    if not pg_reachable():
        pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432")
    name = _new_pg_database()
    try:
        yield make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg", database=name) \
            .render_as_string(hide_password=False)
    finally:
        _drop_pg_database(name)


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's config or SUPPORTBOT_* variables."""
    for key in list(os.environ):
        if key.startswith("SUPPORTBOT_") and key not in ("SUPPORTBOT_TEST_DATABASE",
                                                         "SUPPORTBOT_TEST_PG_URL"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return load_settings(None, database={"url": database_url})


class RecordingChannel:
    """A channel that accepts everything and remembers it (or fails on demand)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.holds_replies = name == "wechat"  # as the real channels
        self.sent: list[Delivery] = []
        self.failures: list[Exception] = []

    async def send(self, delivery: Delivery) -> str | None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(delivery)
        return f"{self.name}-{len(self.sent)}"


CHANNEL_NAMES = ("telegram", "webchat", "wechat", "console")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 12, 7, 2, 0, tzinfo=UTC))  # Monday 10:00 in Shanghai


@pytest.fixture
def channels() -> dict[str, RecordingChannel]:
    return {name: RecordingChannel(name) for name in CHANNEL_NAMES}


@pytest.fixture
async def service(settings: Settings, clock: ManualClock,
                  channels: dict[str, RecordingChannel]) -> AsyncIterator[Service]:
    started = await Service.start(settings, clock=clock, channels=dict(channels), migrate=True)
    try:
        yield started
    finally:
        await started.close()


class ChatDriver:
    """Makes a test read like a conversation: ``replies = await chat.say("hola")``."""

    def __init__(self, service: Service, channel: RecordingChannel, chat: str) -> None:
        self.service = service
        self.channel = channel
        self.chat = chat
        self._counter = 0

    async def say(self, text: str, **extra: Any) -> list[Delivery]:
        self._counter += 1
        before = len(self.channel.sent)
        await self.service.pipeline.handle(InboundMessage(
            channel=self.channel.name, chat=self.chat, text=text,
            external_id=extra.pop("external_id", f"{self.chat}-{self._counter}"), **extra))
        await self.service.outbox.dispatch_due()
        return [d for d in self.channel.sent[before:] if d.chat == self.chat]


@pytest.fixture
def chat(service: Service, channels: dict[str, RecordingChannel]) -> ChatDriver:
    return ChatDriver(service, channels["telegram"], "tg-test")


@pytest.fixture
def make_chat(service: Service, channels: dict[str, RecordingChannel]) -> Any:
    def _make(chat: str, channel: str = "telegram") -> ChatDriver:
        return ChatDriver(service, channels[channel], chat)
    return _make
