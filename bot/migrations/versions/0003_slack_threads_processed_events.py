"""slack threads, processed platform events, hand-off time

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 16:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db.models

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'slack_threads',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('conversation_id', sa.Integer(), nullable=False),
        sa.Column('slack_channel', sa.String(length=64), nullable=False),
        sa.Column('thread_ts', sa.String(length=32), nullable=False),
        sa.Column('created_at', bot.db.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'],
                                name=op.f('fk_slack_threads_conversation_id_conversations')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_slack_threads')),
        sa.UniqueConstraint('slack_channel', 'thread_ts',
                            name=op.f('uq_slack_threads_slack_channel_thread_ts')),
    )
    with op.batch_alter_table('slack_threads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_slack_threads_conversation_id'),
                              ['conversation_id'], unique=False)
    op.create_table(
        'processed_events',
        sa.Column('key', sa.String(length=128), nullable=False),
        sa.Column('received_at', bot.db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_processed_events')),
    )
    with op.batch_alter_table('processed_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_processed_events_received_at'), ['received_at'],
                              unique=False)
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('handed_off_at', bot.db.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_column('handed_off_at')
    with op.batch_alter_table('processed_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_processed_events_received_at'))
    op.drop_table('processed_events')
    with op.batch_alter_table('slack_threads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_slack_threads_conversation_id'))
    op.drop_table('slack_threads')
