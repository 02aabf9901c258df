"""ix_messages_unprocessed: only the messages still to be processed

The index held every message by (direction, processed_at). PostgreSQL's planner, on
statistics taken while the table was smaller, combined it into the rate limit's count of a
chat's recent messages, reading every inbound message's index entry for each new message:
database CPU per message grew with the table (0.4 -> 9 ms over 8,000 messages). Now it is
partial (``WHERE processed_at IS NULL``): it serves ``recover`` and the unprocessed gauges
alone, stays as small as the backlog, and costs nothing to messages stored processed.

Building it reads the messages table once while holding writes to it (not CONCURRENTLY:
migrations run in a transaction); on a large table, upgrade in a quiet hour.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 06:10:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNPROCESSED = sa.text("processed_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None, recreate='never') as batch_op:
        batch_op.drop_index('ix_messages_unprocessed')
        batch_op.create_index('ix_messages_unprocessed', ['direction', 'id'], unique=False,
                              postgresql_where=UNPROCESSED, sqlite_where=UNPROCESSED)


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None, recreate='never') as batch_op:
        batch_op.drop_index('ix_messages_unprocessed')
        batch_op.create_index('ix_messages_unprocessed', ['direction', 'processed_at'],
                              unique=False)
