"""conversations.last_outbound_at dropped

Nothing read it, and keeping it cost an UPDATE of the conversation for every message the
bot answered (docs/architecture.md, "Few statements per message"). When a conversation was
last answered is its latest outbound message: ``max(messages.created_at)`` where
``direction = 'out'``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 05:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db.models

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite: its own DROP COLUMN (3.35+, which the outbox's claim needs anyway), not
    # batch mode's copy of the table: dropping the old table would fail the foreign keys
    # of every message (the connections run with foreign_keys=ON).
    with op.batch_alter_table('conversations', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('last_outbound_at')


def downgrade() -> None:
    with op.batch_alter_table('conversations', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('last_outbound_at', bot.db.models.UTCDateTime(),
                                      nullable=True))
    # Filled again from the messages, as it would have been written.
    op.execute(
        "UPDATE conversations SET last_outbound_at = (SELECT max(messages.created_at) "
        "FROM messages WHERE messages.conversation_id = conversations.id "
        "AND messages.direction = 'out')")
