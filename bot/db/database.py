"""Engine, sessions and migrations for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


class DatabaseUnavailable(Exception):
    """The database cannot be reached or used; the message never contains a password."""


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _discard_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """At checkout, a pooled connection the server has closed (a restart, an idle
    timeout: asyncpg notices the socket closing as it happens) is replaced before anyone
    uses it. The pool treats ``DisconnectionError`` as "connect again" (up to three tries).
    This looks at the driver's state, no round trip, unlike ``pool_pre_ping``."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_closed():
        raise DisconnectionError("connection closed by the server")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


# Connections a PostgreSQL pool may open beyond its size for a burst (closed after).
POOL_OVERFLOW = 5


class Database:
    """One engine and session factory per process. Repositories flush; use cases commit."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 20) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        options: dict[str, Any] = {"echo": echo}
        if self.is_postgres:
            # No pre-ping: on asyncpg it is three round trips (BEGIN, a ping, ROLLBACK) before
            # every transaction, half a millisecond of CPU per message. A connection the
            # server closed is replaced at checkout instead (_discard_if_closed).
            options.update(pool_size=pool_size, max_overflow=POOL_OVERFLOW)
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.is_postgres:
            event.listen(self.engine.sync_engine, "checkout", _discard_if_closed)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock: asyncio.Lock | None = None  # SQLite: see writing()

    def session(self) -> AsyncSession:
        return self.sessions()

    def writing(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Around the process's busiest write transactions (the pipeline's, the outbox's).
        SQLite has one writer at a time, and a connection that finds the write lock taken
        waits in SQLite's busy handler, which sleeps in growing steps (up to 100 ms) and
        polls again: with a dozen webhooks at once, some waited hundreds of milliseconds
        after the lock was free. Taking turns on an asyncio lock first, they wait in line
        and start as soon as the writer before them commits. PostgreSQL: nothing (row
        locks). Not reentrant: never nested."""
        if not self.is_sqlite:
            return contextlib.nullcontext()
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    async def check(self, timeout: float = 10.0) -> None:
        """Fail fast, and clearly, when the database is not reachable at start."""
        try:
            async with asyncio.timeout(timeout):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except TimeoutError:
            raise DatabaseUnavailable(
                f"database {safe_url(self.url)} did not answer within {timeout:.0f} s") from None
        except Exception as exc:  # noqa: BLE001 - every driver error means "unusable"
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
            raise DatabaseUnavailable(
                f"cannot connect to database {safe_url(self.url)}: {reason}") from None

    async def upgrade(self, revision: str = "head") -> None:
        """Apply Alembic migrations up to ``revision``."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_run_alembic_upgrade, revision)

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    async def dispose(self) -> None:
        await self.engine.dispose()


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "bot:migrations")
    return cfg


def _run_alembic_upgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()
