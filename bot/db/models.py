"""Storage model (SQLAlchemy 2, typed). SQLite by default, PostgreSQL in production.

Times are stored as UTC. Constraint names follow a naming convention so Alembic
migrations stay stable across databases.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as naive UTC and gives them back aware, on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
        Decimal: Numeric(14, 2),
    }


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(64), unique=True)
    company: Mapped[str | None] = mapped_column(String(200))
    contact_name: Mapped[str | None] = mapped_column(String(200))
    country: Mapped[str | None] = mapped_column(String(2))
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    phone: Mapped[str | None] = mapped_column(String(40))
    language: Mapped[str | None] = mapped_column(String(8))
    timezone: Mapped[str | None] = mapped_column(String(64))
    strategic: Mapped[bool] = mapped_column(default=False)
    account_manager: Mapped[str | None] = mapped_column(String(64))
    annual_target_m2: Mapped[int | None]
    annual_volume_m2: Mapped[int | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    erased_at: Mapped[datetime | None]

    contacts: Mapped[list[Contact]] = relationship(back_populates="customer")


class Contact(Base):
    """A chat identity (channel + chat id), linked to a customer once known or verified."""

    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("channel", "chat"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    chat: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    language_hint: Mapped[str | None] = mapped_column(String(16))
    # Ownership proof: failed tries of "order number + e-mail", and the lock they cause.
    verify_failures: Mapped[int] = mapped_column(default=0)
    verify_locked_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]

    customer: Mapped[Customer | None] = relationship(back_populates="contacts")


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    slack_user_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254))
    is_supervisor: Mapped[bool] = mapped_column(default=False)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]


class Conversation(Base):
    """One support conversation with a chat; a new one opens after the last is resolved."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_chat_status", "channel", "chat", "status"),
                      Index("ix_conversations_handoff_route", "status", "handoff_route"))

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    chat: Mapped[str] = mapped_column(String(128))
    # open -> handed_off -> owned -> resolved
    status: Mapped[str] = mapped_column(String(16), default="open")
    language: Mapped[str | None] = mapped_column(String(8))
    language_locked: Mapped[bool] = mapped_column(default=False)
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    last_intent: Mapped[str | None] = mapped_column(String(32))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), index=True)
    # Multi-turn flows (quote, verification, complaint) are state machines stored here.
    flow: Mapped[str | None] = mapped_column(String(32))
    flow_state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    flow_expires_at: Mapped[datetime | None]
    misses: Mapped[int] = mapped_column(default=0)
    # Facts kept for the whole conversation, e.g. which incoterms were already explained.
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    slack_channel: Mapped[str | None] = mapped_column(String(64))
    slack_thread_ts: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(index=True)  # KPI periods (bot/kpis.py)
    updated_at: Mapped[datetime]
    handed_off_at: Mapped[datetime | None]
    # Where the hand-off card goes: "account_manager" (a strategic customer's green channel,
    # by direct message) until it moves to "channel"; None means the agents' channel.
    handoff_route: Mapped[str | None] = mapped_column(String(16))
    survey_sent_at: Mapped[datetime | None]
    satisfaction: Mapped[int | None]  # the customer's 1-5 rating after resolution
    satisfaction_at: Mapped[datetime | None]
    last_inbound_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None] = mapped_column(index=True)

    contact: Mapped[Contact] = relationship()
    customer: Mapped[Customer | None] = relationship()
    owner: Mapped[Agent | None] = relationship()


class Message(Base):
    """Every message in or out. Inbound rows are committed before the platform is answered."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        # Only the rows still to be processed (recover, the unprocessed gauges): an index
        # of every message by direction let PostgreSQL's planner, on statistics taken
        # when the table was smaller, AND it into the rate limit's count, reading every
        # inbound message's entry for each new message (0.4 -> 9 ms of database CPU per
        # message over 8,000 messages; docs/benchmarks.md).
        Index("ix_messages_unprocessed", "direction", "id",
              postgresql_where=text("processed_at IS NULL"),
              sqlite_where=text("processed_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    direction: Mapped[str] = mapped_column(String(3))  # in | out
    sender: Mapped[str] = mapped_column(String(16))  # customer | bot | agent
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str | None] = mapped_column(String(128))
    audience: Mapped[str] = mapped_column(String(16), default="customer")
    kind: Mapped[str | None] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    lang: Mapped[str | None] = mapped_column(String(8))
    intent: Mapped[str | None] = mapped_column(String(32))
    confidence: Mapped[float | None]
    entities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    urgent: Mapped[bool] = mapped_column(default=False)
    attachments: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime]
    processed_at: Mapped[datetime | None]

    conversation: Mapped[Conversation] = relationship()


class OutboxItem(Base):
    """A reply waiting for its platform to accept it; retried with backoff until it does."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_chat", "channel", "chat", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # None for messages that belong to no conversation (the monthly report to agents)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), unique=True)
    # The customer message this answers: WeChat can take it back as the passive reply.
    in_reply_to: Mapped[int | None] = mapped_column(index=True)
    channel: Mapped[str] = mapped_column(String(32))
    chat: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # pending | sent | failed | held (waits for the customer to write again: WeChat's 48 h)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    external_id: Mapped[str | None] = mapped_column(String(128))

    message: Mapped[Message | None] = relationship(foreign_keys=[message_id])


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    product: Mapped[str | None] = mapped_column(String(64))
    quantity_m2: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    incoterm: Mapped[str | None] = mapped_column(String(3))
    destination: Mapped[str | None] = mapped_column(String(120))
    stage: Mapped[str] = mapped_column(String(16))
    progress: Mapped[int | None]
    etd: Mapped[date | None]
    eta: Mapped[date | None]
    vessel: Mapped[str | None] = mapped_column(String(120))
    bl_number: Mapped[str | None] = mapped_column(String(64))
    inspection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    documents: Mapped[dict[str, Any]] = mapped_column(default=dict)
    delivered_at: Mapped[datetime | None] = mapped_column(index=True)
    progress_noted_at: Mapped[datetime | None]  # last weekly production note
    followup_sent_at: Mapped[datetime | None]  # post-delivery follow-up
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    customer: Mapped[Customer] = relationship()


class OrderEvent(Base):
    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    at: Mapped[datetime]
    stage: Mapped[str] = mapped_column(String(16))
    changes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str] = mapped_column(String(16), default="import")
    notified_at: Mapped[datetime | None] = mapped_column(index=True)  # customer alerted


class Quote(Base):
    __tablename__ = "quotes"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    status: Mapped[str] = mapped_column(String(20))  # sent | pending_approval | approved
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    product: Mapped[str | None] = mapped_column(String(64))
    quantity_m2: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    incoterm: Mapped[str | None] = mapped_column(String(3))
    destination: Mapped[str | None] = mapped_column(String(120))
    lines: Mapped[list[Any]] = mapped_column(default=list)
    total: Mapped[Decimal | None]
    valid_until: Mapped[date | None]
    created_at: Mapped[datetime]


class Case(Base):
    """A complaint, return, technical request or hand-off, with its resolution."""

    __tablename__ = "cases"
    __table_args__ = (Index("ix_cases_kind_opened_at", "kind", "opened_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    kind: Mapped[str] = mapped_column(String(16))
    category: Mapped[str | None] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    description: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[list[Any]] = mapped_column(default=list)
    rating: Mapped[int | None]
    opened_at: Mapped[datetime] = mapped_column(index=True)
    resolved_at: Mapped[datetime | None]


class OwnershipEvent(Base):
    """Every change of who owns a conversation: taken, transferred, released, resolved."""

    __tablename__ = "ownership_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    target_agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    action: Mapped[str] = mapped_column(String(16))
    ok: Mapped[bool] = mapped_column(default=True)
    reason: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime]


class SlaClock(Base):
    """A response-time clock in working time (SPEC §6). ``next_check_at`` is when the sweep
    must look at it next (the warning time, then the deadline, then never), so the sweep
    reads only clocks that are due, through an index, however many are running."""

    __tablename__ = "sla_clocks"
    __table_args__ = (Index("ix_sla_clocks_due", "status", "next_check_at"),
                      Index("ix_sla_clocks_kind_started_at", "kind", "started_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    kind: Mapped[str] = mapped_column(String(32))
    # running | paused | met | breached | closed (ended without the awaited answer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    calendar: Mapped[str] = mapped_column(String(32), default="default")
    target_minutes: Mapped[int]
    started_at: Mapped[datetime]
    segment_started_at: Mapped[datetime | None]  # when it last started or resumed
    consumed_minutes: Mapped[int] = mapped_column(default=0)  # working minutes before that
    deadline_at: Mapped[datetime | None]
    warn_at: Mapped[datetime | None]
    next_check_at: Mapped[datetime | None]
    paused_at: Mapped[datetime | None]
    warned_at: Mapped[datetime | None]
    breached_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]
    working_minutes: Mapped[int | None]  # the clock's working-time length when it stopped


class SlackThread(Base):
    """A Slack thread that belongs to a conversation: the card in the agents' channel, and
    for strategic customers first the card in their account manager's direct messages.
    Replies in any of them reach the conversation; the newest is where relays go."""

    __tablename__ = "slack_threads"
    __table_args__ = (UniqueConstraint("slack_channel", "thread_ts"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    slack_channel: Mapped[str] = mapped_column(String(64))
    thread_ts: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]


class ProcessedEvent(Base):
    """Platform deliveries already acted on (e.g. ``slack:<event_id>``), recorded in the
    same transaction as the action, so a retry (X-Slack-Retry-Num) or a second process
    receiving the same delivery does nothing twice."""

    __tablename__ = "processed_events"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(index=True)


# The kinds of processed_events keys, by prefix. These guard only minutes, and the retention
# job forgets them after a day (bot/jobs.py): a Slack event acted on (against Slack's
# retries), a WeChat callback URL and the message it came with (against a replay), a chat's
# last rate-limit notice. The monthly report's keys (``job:monthly_report:<month>``) stay.
SLACK_EVENT_KEY = "slack:"
WECHAT_URL_KEY = "wechat-url:"
WECHAT_URL_MESSAGE_KEY = "wechat-url-message:"
RATE_LIMIT_NOTICE_KEY = "rate-limit:"
SHORT_LIVED_KEYS = (SLACK_EVENT_KEY, WECHAT_URL_KEY, WECHAT_URL_MESSAGE_KEY,
                    RATE_LIMIT_NOTICE_KEY)


def key_digest(*parts: str) -> str:
    """A key's part made from others (a chat id, a signed URL) without holding them: 40 hex
    digits of their SHA-256, so no personal data sits in a key."""
    joined = "\x00".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.sha256(joined).hexdigest()[:40]
