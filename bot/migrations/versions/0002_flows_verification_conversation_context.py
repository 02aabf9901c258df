"""flows, verification, conversation context

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:02:07.996532
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db.models

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('verify_failures', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('verify_locked_until', bot.db.models.UTCDateTime(), nullable=True))

    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('context', sa.JSON(), nullable=False,
                                      server_default='{}'))



def downgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_column('context')

    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_column('verify_locked_until')
        batch_op.drop_column('verify_failures')

