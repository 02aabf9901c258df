from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

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


def _downgrade(connection: object, revision: str) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, revision)


async def test_dropping_last_outbound_at_keeps_the_conversations_and_their_messages(
        database_url: str) -> None:
    """Migration 0006 on a database in use (SQLite: the default, migrated at start): the
    conversations, their messages and the foreign keys between them stay; downgraded, the
    column comes back filled from the latest outbound message."""
    db = Database(database_url)
    try:
        await db.upgrade("0005")
        async with db.engine.begin() as connection:
            await connection.execute(text(
                "INSERT INTO contacts (id, channel, chat, created_at, verify_failures) "
                "VALUES (1, 'telegram', 'c1', '2026-01-01', 0)"))
            await connection.execute(text(
                "INSERT INTO conversations (id, contact_id, channel, chat, status, "
                "language_locked, priority, flow_state, misses, context, created_at, "
                "updated_at) VALUES (1, 1, 'telegram', 'c1', 'open', false, 'normal', '{}', "
                "0, '{}', '2026-01-01', '2026-01-01')"))
            await connection.execute(text(
                "INSERT INTO messages (conversation_id, direction, sender, channel, audience, "
                "text, entities, urgent, attachments, created_at) VALUES "
                "(1, 'in', 'customer', 'telegram', 'customer', 'hi', '{}', false, '[]', "
                "'2026-01-01 10:00:00'), (1, 'out', 'bot', 'telegram', 'customer', 'hello', "
                "'{}', false, '[]', '2026-01-01 10:00:01')"))
        await db.upgrade()
        async with db.engine.connect() as connection:
            columns = await connection.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("conversations")})
            messages = (await connection.execute(text(
                "SELECT count(*) FROM messages JOIN conversations ON conversations.id = "
                "messages.conversation_id"))).scalar()
        assert "last_outbound_at" not in columns and messages == 2
        async with db.engine.begin() as connection:
            await connection.run_sync(_downgrade, "0005")
        async with db.engine.connect() as connection:
            last = (await connection.execute(text(
                "SELECT last_outbound_at FROM conversations"))).scalar()
        assert str(last).startswith("2026-01-01 10:00:01")
        await db.upgrade()
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert await db.current_revision() == head
    finally:
        await db.dispose()


async def test_the_unprocessed_messages_index_holds_only_those(database_url: str) -> None:
    """Partial (migration 0007): a full index of messages by direction let PostgreSQL read
    every inbound message's entry for each new message's rate-limit count."""
    db = Database(database_url)
    try:
        await db.upgrade()
        query = ("SELECT sql FROM sqlite_master WHERE name = 'ix_messages_unprocessed'"
                 if db.is_sqlite else "SELECT indexdef FROM pg_indexes WHERE indexname = "
                 "'ix_messages_unprocessed'")
        async with db.engine.connect() as connection:
            definition = (await connection.execute(text(query))).scalar_one()
        assert "processed_at IS NULL" in definition, definition
        assert "(direction, id)" in definition.replace('"', ""), definition
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
