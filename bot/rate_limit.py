"""Rate limiting of a flooding chat, counted from the stored messages.

At most ``[limits] messages_per_minute`` inbound messages of one chat (channel + chat id)
are stored in any sliding minute. The count is read from the ``messages`` table, so it
holds across processes and restarts without any shared memory, and for messages of one
chat arriving all at once too: the pipeline counts holding the chat's contact row, which
every message stored holds until it commits (``Pipeline._admit``).

A message over the limit is never stored. What the sender gets:

* the first refused message of a minute raises ``InvalidMessage("rate limited",
  "error.rate_limited")``, which every channel already turns into one polite reply (the
  web chat's 422, Telegram's direct message, WeChat's passive reply);
* every further refused message within the minute after that notice is dropped
  silently: ``refuse`` returns a ``Received`` marked as a duplicate that points at a
  message of the chat that was processed already (the bot's latest reply), so the
  channel acknowledges the platform and sends nothing. A flood therefore gets at most
  one refusal a minute, and the bot never floods back.

When the notice was given is kept in ``processed_events`` under one key per chat (a hash
of the chat, never the chat id itself), claimed with a conditional update, so two
processes cannot both send it. A redelivery of a message that was stored is never
refused: it is answered as the duplicate it is.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Integer, Select, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.selectable import ScalarSelect

from bot.db.models import (
    RATE_LIMIT_NOTICE_KEY,
    Conversation,
    Message,
    ProcessedEvent,
    key_digest,
)

if TYPE_CHECKING:
    from bot.config import LimitsSettings
    from bot.db.database import Database
    from bot.pipeline import Received
    from bot.types import InboundMessage

WINDOW = timedelta(minutes=1)


def notice_key(channel: str, chat: str) -> str:
    """The ``processed_events`` key that remembers when a chat was last told."""
    return f"{RATE_LIMIT_NOTICE_KEY}{channel[:32]}:{key_digest(channel, chat)}"


def _recent_conversations(channel: object, chat: object, since: object) -> ScalarSelect[int]:
    """The chat's conversations updated since ``since`` (values or bind parameters). Every
    message stored in the last minute is in a conversation updated since (storing sets
    updated_at), so only the chat's active conversations are read."""
    return select(Conversation.id).where(
        Conversation.channel == channel, Conversation.chat == chat,
        Conversation.updated_at >= since).scalar_subquery()


def _count_recent_inbound() -> Select[int]:
    """How many messages the chat stored since ``since``, counted up to ``limit``: built
    once, as every inbound message runs it (building costs as much as running)."""
    since = bindparam("since", type_=Message.created_at.type)
    # Named after no column: the pipeline runs this inside a statement that also updates
    # the contact and the conversation, and SQLAlchemy would take a parameter named after
    # one of their columns (channel, chat) as a value to SET.
    recent = _recent_conversations(bindparam("of_channel"), bindparam("of_chat"), since)
    inbound_rows = (select(Message.id).where(
        Message.conversation_id.in_(recent), Message.direction == "in",
        Message.created_at >= since).limit(bindparam("limit", type_=Integer)).subquery())
    return select(func.count()).select_from(inbound_rows)


COUNT_RECENT_INBOUND = _count_recent_inbound()


def count_parameters(limits: LimitsSettings, inbound: InboundMessage,
                     now: datetime) -> dict[str, object]:
    """The parameters of ``COUNT_RECENT_INBOUND`` for this message (the pipeline runs it
    together with its duplicate check, in the transaction that stores the message)."""
    return {"of_channel": inbound.channel, "of_chat": inbound.chat, "since": now - WINDOW,
            "limit": max(limits.messages_per_minute, 0)}


def over_limit(limits: LimitsSettings, recent: int) -> bool:
    """True when the chat stored ``messages_per_minute`` messages in the last minute
    already (``recent``, as ``COUNT_RECENT_INBOUND`` counted them)."""
    return 0 < limits.messages_per_minute <= recent


async def refuse(db: Database, inbound: InboundMessage, now: datetime) -> Received:
    """For a message over the limit, after the caller's transaction: raise
    ``InvalidMessage`` (the polite notice) once a minute per chat, else return a
    duplicate-like ``Received`` (dropped silently)."""
    from bot.pipeline import InvalidMessage, Received

    since = now - WINDOW
    async with db.sessions() as session:
        latest = await _latest_processed(session, _recent_conversations(
            inbound.channel, inbound.chat, since))
    if await _claim_notice(db, notice_key(inbound.channel, inbound.chat), now, since) \
            or latest is None:
        raise InvalidMessage("rate limited", "error.rate_limited")
    return Received(latest[0], latest[1], duplicate=True)


async def _latest_processed(session: AsyncSession,
                            recent: ScalarSelect[int]) -> tuple[int, int] | None:
    """The chat's latest outbound message (its processing is over and no webhook answers
    with it again), else its latest inbound one."""
    for direction in ("out", "in"):
        query = select(Message.id, Message.conversation_id).where(
            Message.conversation_id.in_(recent), Message.direction == direction)
        if direction == "out":
            query = query.where(Message.processed_at.is_not(None))
        row = (await session.execute(query.order_by(Message.id.desc()).limit(1))).first()
        if row is not None:
            return int(row[0]), int(row[1])
    return None


async def _claim_notice(db: Database, key: str, now: datetime, since: datetime) -> bool:
    """True for exactly one caller per minute and chat: the one who sends the notice."""
    try:
        async with db.sessions.begin() as session:
            claimed = await session.execute(
                update(ProcessedEvent).where(ProcessedEvent.key == key,
                                             ProcessedEvent.received_at <= since)
                .values(received_at=now))
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                return True
            if await session.get(ProcessedEvent, key) is not None:
                return False  # told less than a minute ago
            session.add(ProcessedEvent(key=key, received_at=now))
            await session.flush()
            return True
    except IntegrityError:
        return False  # another process told this chat at the same moment
