"""sla clocks in working time, proactive messages, satisfaction

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 16:50:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db.models

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = bot.db.models.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table('sla_clocks', schema=None) as batch_op:
        batch_op.drop_index('ix_sla_clocks_due')
        batch_op.add_column(sa.Column('calendar', sa.String(length=32), nullable=False,
                                      server_default='default'))
        batch_op.add_column(sa.Column('segment_started_at', UTC_DATETIME(), nullable=True))
        batch_op.add_column(sa.Column('consumed_minutes', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('warn_at', UTC_DATETIME(), nullable=True))
        batch_op.add_column(sa.Column('next_check_at', UTC_DATETIME(), nullable=True))
        batch_op.create_index('ix_sla_clocks_due', ['status', 'next_check_at'], unique=False)
    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('notified_at', UTC_DATETIME(), nullable=True))
        batch_op.create_index(batch_op.f('ix_order_events_notified_at'), ['notified_at'],
                              unique=False)
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('progress_noted_at', UTC_DATETIME(), nullable=True))
        batch_op.add_column(sa.Column('followup_sent_at', UTC_DATETIME(), nullable=True))
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('survey_sent_at', UTC_DATETIME(), nullable=True))
        batch_op.add_column(sa.Column('satisfaction', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('satisfaction_at', UTC_DATETIME(), nullable=True))
        batch_op.add_column(sa.Column('handoff_route', sa.String(length=16), nullable=True))
        batch_op.create_index('ix_conversations_handoff_route', ['status', 'handoff_route'],
                              unique=False)
    # What happened before this version was not announced by it: no alert for old order
    # events, no follow-up for orders delivered long ago, progress notes counted from now.
    op.execute("UPDATE order_events SET notified_at = at")
    op.execute("UPDATE orders SET followup_sent_at = delivered_at WHERE delivered_at IS NOT NULL")
    op.execute("UPDATE orders SET progress_noted_at = updated_at WHERE stage = 'in_production'")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.alter_column('message_id', existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column('in_reply_to', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_outbox_in_reply_to'), ['in_reply_to'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_in_reply_to'))
        batch_op.drop_column('in_reply_to')
        batch_op.alter_column('message_id', existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_handoff_route')
        batch_op.drop_column('handoff_route')
        batch_op.drop_column('satisfaction_at')
        batch_op.drop_column('satisfaction')
        batch_op.drop_column('survey_sent_at')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('followup_sent_at')
        batch_op.drop_column('progress_noted_at')
    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_order_events_notified_at'))
        batch_op.drop_column('notified_at')
    with op.batch_alter_table('sla_clocks', schema=None) as batch_op:
        batch_op.drop_index('ix_sla_clocks_due')
        batch_op.drop_column('next_check_at')
        batch_op.drop_column('warn_at')
        batch_op.drop_column('consumed_minutes')
        batch_op.drop_column('segment_started_at')
        batch_op.drop_column('calendar')
        batch_op.create_index('ix_sla_clocks_due', ['status', 'deadline_at'], unique=False)
