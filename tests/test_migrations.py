from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from bot.db.database import Database, alembic_config
from bot.db.models import Base


async def test_migrations_build_exactly_the_models(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.upgrade()
        await db.upgrade()  # idempotent

        def diff(connection: object) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})  # type: ignore[arg-type]
            return compare_metadata(context, Base.metadata)

        async with db.engine.connect() as conn:
            differences = await conn.run_sync(diff)
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert differences == []
        assert set(Base.metadata.tables) <= tables
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert await db.current_revision() == head
    finally:
        await db.dispose()


async def test_unreachable_database_is_reported_without_password() -> None:
    import pytest

    from bot.db.database import DatabaseUnavailable

    db = Database("postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/nope")
    try:
        with pytest.raises(DatabaseUnavailable) as info:
            await db.check(timeout=5)
        assert "cannot connect to database" in str(info.value)
        assert "hunter2" not in str(info.value)
    finally:
        await db.dispose()
