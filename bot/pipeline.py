"""The message pipeline: store, acknowledge, understand, handle, queue the replies.

Transaction 1 (``receive``) deduplicates on (channel, external id) and stores the message,
its contact and conversation; only after it commits may a channel acknowledge the platform.
Transaction 2 (``process``) understands the message, runs the handler and puts the replies
in the outbox. A crash between the two is repaired by ``recover``, which processes every
stored message that was not processed yet.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Integer,
    Select,
    String,
    Update,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased, make_transient_to_detached, selectinload
from sqlalchemy.orm.attributes import instance_dict, set_committed_value
from sqlalchemy.sql.elements import ColumnClause

from bot import metrics, rate_limit
from bot.clock import Clock
from bot.config import Settings
from bot.db.database import Database
from bot.db.models import Agent, Contact, Conversation, Customer, Message, OutboxItem
from bot.dialogue import Dialogue
from bot.handoff import AGENTS_CHANNEL
from bot.sla import SlaRules
from bot.types import InboundMessage, Reply
from intents.understanding import Understanding

log = logging.getLogger(__name__)
OPEN_STATUSES = ("open", "handed_off", "owned")


def _is_open(status: Any) -> Any:
    """``status IN OPEN_STATUSES`` as plain comparisons: an IN list is an expanding
    parameter, and SQLAlchemy rewrites the SQL of a statement holding one at every
    execution."""
    return or_(*(status == value for value in OPEN_STATUSES))
ModelT = TypeVar("ModelT", Contact, Conversation, Message)


class InvalidMessage(ValueError):
    """A message the pipeline refuses; ``template`` is the reply explaining why."""

    def __init__(self, reason: str, template: str, **values: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.template = template
        self.values = values


@dataclass
class Received:
    message_id: int
    conversation_id: int
    duplicate: bool


@dataclass
class Processed:
    message_id: int
    conversation_id: int
    understanding: Understanding | None
    replies: list[Reply] = field(default_factory=list)
    outbox_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Admission:
    """What ``_admit`` found before anything is written (see there)."""

    duplicate: tuple[int, int] | None  # a stored delivery's message and conversation ids
    recent: int
    contact: Mapping[Any, Any] | None
    conversation: Mapping[Any, Any] | None
    created: bool = False  # the contact was created by this message (the chat's first)


class _ProcessingFailed(Exception):
    """Processing raised inside ``handle``'s transaction (rolled back with the message)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class UnfitMessage(ValueError):
    """A delivery whose identifiers cannot be stored (a chat or message id longer than its
    column, or not text): no platform sends that, so the channel refuses the request (400)
    and nobody is answered."""


def _length(column: object) -> int:
    """The length of a ``String`` column of the model, so the limits follow the schema."""
    column_type = getattr(column, "type", None)
    assert isinstance(column_type, String) and column_type.length is not None
    return column_type.length


CHAT_MAX = _length(Contact.chat)  # = Conversation.chat = OutboxItem.chat
EXTERNAL_ID_MAX = _length(Message.external_id)
DISPLAY_NAME_MAX = _length(Contact.display_name)
LANGUAGE_HINT_MAX = _length(Contact.language_hint)


def storable_text(text: str) -> str:
    """Text PostgreSQL takes: no NUL characters and no lone surrogates."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def clip_text(text: str | None, limit: int) -> str | None:
    """Free-text metadata (a display name, a language hint) as its column holds it: made
    storable and cut to ``limit`` characters. Clipping a name is harmless; failing the whole
    delivery over it is not."""
    return storable_text(text)[:limit] if text is not None else None


def fit_inbound(inbound: InboundMessage) -> InboundMessage:
    """The message as the database can store it. Metadata that is only a hint (the sender's
    display name, the language hint) is cleaned and clipped to its column; an identifier
    that cannot fit (chat id, external id) raises ``UnfitMessage``. Every channel calls this
    while it parses a delivery, so such a request is refused (400) with nothing stored, and
    ``receive`` calls it again for everyone else (console, replay)."""
    for what, value, limit in (("chat id", inbound.chat, CHAT_MAX),
                               ("external id", inbound.external_id, EXTERNAL_ID_MAX)):
        if value is not None and (len(value) > limit or storable_text(value) != value):
            raise UnfitMessage(f"{what} is not text of at most {limit} characters")
    user_name = clip_text(inbound.user_name, DISPLAY_NAME_MAX)
    hint = clip_text(inbound.language_hint, LANGUAGE_HINT_MAX)
    if (user_name, hint) == (inbound.user_name, inbound.language_hint):
        return inbound
    return dataclasses.replace(inbound, user_name=user_name, language_hint=hint)


# Statements of the hot path, built once: building a statement and its cache key costs
# about as much CPU as running it (0.13 of 0.3 ms for a one-row select on PostgreSQL).
FIND_DUPLICATE = select(Message.id, Message.conversation_id).where(
    Message.channel == bindparam("of_channel"),
    Message.external_id == bindparam("external_id"))
# Before anything is written, in one round trip: is this delivery stored already (a
# redelivery; no message without an external id is), and how many messages did the chat
# store in the last minute (the rate limit).
ADMISSION = select(
    FIND_DUPLICATE.with_only_columns(Message.id).scalar_subquery(),
    FIND_DUPLICATE.with_only_columns(Message.conversation_id).scalar_subquery(),
    rate_limit.COUNT_RECENT_INBOUND.scalar_subquery())
# The chat's contact, marked seen (with the sender's name and language hint when given) and
# read in one statement. Being an UPDATE, it locks the row: on PostgreSQL that is the first
# lock of the contact -> conversation -> message order; on SQLite it is the transaction's
# first write, so it waits for the write lock and returns the row as the chat's previous
# message left it (verification counters, customer link).
_CONTACT_TOUCH = {
    "last_seen_at": bindparam("now", type_=Contact.last_seen_at.type),
    "display_name": func.coalesce(bindparam("user_name", type_=Contact.display_name.type),
                                  Contact.display_name),
    "language_hint": func.coalesce(bindparam("hint", type_=Contact.language_hint.type),
                                   Contact.language_hint),
}
TOUCH_CONTACT = (update(Contact)
                 .where(Contact.channel == bindparam("of_channel"),
                        Contact.chat == bindparam("of_chat"))
                 .values(_CONTACT_TOUCH)
                 .returning(*Contact.__table__.columns))
OPEN_CONVERSATION = (select(Conversation)
                     .where(Conversation.contact_id == bindparam("contact_id"),
                            _is_open(Conversation.status))
                     .order_by(Conversation.id.desc()).limit(1))
OPEN_CONVERSATION_LOCKED = OPEN_CONVERSATION.with_for_update(of=Conversation)


def _touch_open_conversation() -> Update:
    """The contact's open conversation, marked as written to now and read in one
    statement (locked, like any UPDATE). The status is checked again on the row itself: on
    PostgreSQL a conversation resolved meanwhile is re-checked and left out."""
    latest = aliased(Conversation)
    now = bindparam("now", type_=Conversation.updated_at.type)
    open_id = (select(latest.id)
               .where(latest.contact_id == bindparam("of_contact"),
                      _is_open(latest.status))
               .order_by(latest.id.desc()).limit(1).scalar_subquery())
    return (update(Conversation)
            .where(Conversation.id == open_id, _is_open(Conversation.status))
            .values(last_inbound_at=now, updated_at=now)
            .returning(*Conversation.__table__.columns))


TOUCH_OPEN_CONVERSATION = _touch_open_conversation()
CONTACT_COLUMNS = tuple(Contact.__table__.columns)
CONVERSATION_COLUMNS = tuple(Conversation.__table__.columns)


def _admit_and_touch() -> Select[Any]:
    """PostgreSQL: ``ADMISSION``, ``TOUCH_CONTACT`` and ``TOUCH_OPEN_CONVERSATION`` in one
    statement (one round trip instead of three, about 0.2 ms of CPU each through
    SQLAlchemy and asyncpg). Data-modifying common table expressions: the contact is
    touched only when the message is admitted (no stored duplicate, under the rate
    limit), the conversation only when the contact was, each read back with its columns.
    One row: ``duplicate_id, duplicate_in, recent``, then the contact's columns, then
    the conversation's (NULLs for a row not touched), then the id of the contact as the
    statement's snapshot saw it (``CONTACT_SEEN_AT``).

    The admission is counted in the statement's snapshot, before the contact's lock is
    waited for: a message of the same chat stored meanwhile would not be counted, and a
    burst of concurrent messages could all pass the rate limit. So the contact is touched
    only if it is still the row version the snapshot saw (its ``xmin``, the transaction
    that wrote it): when another transaction changed it meanwhile, nothing is changed
    (the row stays locked, as the UPDATE waited for it) and the caller, seeing a contact
    that exists but was not touched, locks the contact as the UPDATE would and counts
    again (``_admit`` and ``LOCK_CONTACT``).

    Its snapshot is taken before the contact's lock is waited for, so an open
    conversation another transaction created meanwhile is not seen: the caller then runs
    ``_open_conversation``, whose statements see it. A conversation resolved meanwhile is
    not returned (its status is checked again on the row itself)."""
    admission = ADMISSION.cte("admission")
    limit = bindparam("limit", type_=Integer)
    # PostgreSQL's system column: the transaction that wrote this version of the row.
    row_version: ColumnClause[Any] = literal_column("contacts.xmin")
    seen = (select(Contact.id, row_version.label("version"))
            .where(Contact.channel == bindparam("of_channel"),
                   Contact.chat == bindparam("of_chat"))
            .cte("seen_contact"))
    contact = (update(Contact)
               .where(Contact.channel == bindparam("of_channel"),
                      Contact.chat == bindparam("of_chat"),
                      row_version == select(seen.c.version).scalar_subquery(),
                      select(admission.c[0].is_(None)
                             & or_(limit == 0, admission.c[2] < limit)).scalar_subquery())
               .values(_CONTACT_TOUCH)
               .returning(*CONTACT_COLUMNS)
               .cte("touched_contact"))
    latest = aliased(Conversation)
    now = bindparam("now", type_=Conversation.updated_at.type)
    open_id = (select(latest.id)
               .where(latest.contact_id == select(contact.c.id).scalar_subquery(),
                      _is_open(latest.status))
               .order_by(latest.id.desc()).limit(1).scalar_subquery())
    conversation = (update(Conversation)
                    .where(Conversation.id == open_id,
                           _is_open(Conversation.status))
                    .values(last_inbound_at=now, updated_at=now)
                    .returning(*CONVERSATION_COLUMNS)
                    .cte("touched_conversation"))
    return (select(*admission.c, *contact.c, *conversation.c,
                   select(seen.c.id).scalar_subquery())
            .select_from(admission.outerjoin(contact, true())
                         .outerjoin(conversation, true())))


ADMIT_AND_TOUCH = _admit_and_touch()
_CONTACT_KEYS = tuple(column.key for column in CONTACT_COLUMNS)
_CONVERSATION_KEYS = tuple(column.key for column in CONVERSATION_COLUMNS)
# Where ADMIT_AND_TOUCH's row holds the contact's columns, the conversation's, and the id
# of the contact its snapshot saw.
CONTACT_AT = 3
CONVERSATION_AT = CONTACT_AT + len(_CONTACT_KEYS)
CONTACT_SEEN_AT = CONVERSATION_AT + len(_CONVERSATION_KEYS)
# The chat's contact locked, nothing changed: after it, a new statement's snapshot holds
# every message of the chat stored before (each was stored holding this lock). FOR NO KEY
# UPDATE, the lock an UPDATE of the row takes: it conflicts with every message storing and
# with erasure, not with the key-share locks of rows referring to the contact.
LOCK_CONTACT = (select(Contact.id)
                .where(Contact.channel == bindparam("of_channel"),
                       Contact.chat == bindparam("of_chat"))
                .with_for_update(key_share=True))
# Replies held until the customer wrote again (WeChat's 48-hour window) go now. No object
# of the session can be such a row (storing loads no outbox rows), so nothing to synchronise.
RELEASE_HELD = (update(OutboxItem)
                .where(OutboxItem.channel == bindparam("of_channel"),
                       OutboxItem.chat == bindparam("of_chat"), OutboxItem.status == "held")
                .values(status="pending",
                        next_attempt_at=bindparam("now", type_=OutboxItem.next_attempt_at.type))
                .execution_options(synchronize_session=False))

# Messages and outbox rows written with Core (``queue_replies``): several rows per
# statement, ids in the rows' order.
MESSAGE_COLUMNS = tuple(column for column in Message.__table__.columns
                        if column.key != "id")
INSERT_MESSAGES = insert(Message).returning(Message.id, sort_by_parameter_order=True)
INSERT_OUTBOX_ITEMS = insert(OutboxItem).returning(OutboxItem.id, sort_by_parameter_order=True)
# A chat's first message: its contact and conversation, read back with their defaults.
# The contact's INSERT does nothing (and returns no row) when another transaction
# created the chat's contact meanwhile.
INSERT_CONTACT_PG, INSERT_CONTACT_SQLITE = (
    dialect_insert(Contact).on_conflict_do_nothing(index_elements=["channel", "chat"])
    .returning(*Contact.__table__.columns)
    for dialect_insert in (postgresql.insert, sqlite.insert))
INSERT_CONVERSATION = insert(Conversation).returning(*Conversation.__table__.columns)


def _touch_parameters(inbound: InboundMessage, now: datetime) -> dict[str, object]:
    """``TOUCH_CONTACT``'s parameters (and ``ADMIT_AND_TOUCH``'s, with the admission's)."""
    return {"of_channel": inbound.channel, "of_chat": inbound.chat, "now": now,
            "user_name": inbound.user_name or None, "hint": inbound.language_hint or None}


def _column_values(message: Message) -> dict[str, object]:
    """Every column of a pending message, for a Core INSERT: what the message holds, and a
    NOT NULL column's default where it holds nothing (as the ORM's INSERT would)."""
    values: dict[str, object] = {}
    for column in MESSAGE_COLUMNS:
        value = getattr(message, column.key)
        if value is None and not column.nullable and column.default is not None:
            default = column.default
            value = default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
        values[column.key] = value
    return values


def _persistent(session: AsyncSession, instance: ModelT,
                values: Mapping[Any, object]) -> ModelT:
    """``instance`` as the session's object for a row read or written with Core, its
    columns loaded with ``values`` (all of them, the primary key included): later code
    reads and changes it as if the ORM had loaded it, for a fraction of the CPU (the row
    statements of the hot path). The session must not hold another object for the row."""
    # Written into the instance's dictionary, which make_transient_to_detached then marks
    # committed (as loaded): 11 µs for a conversation where set_committed_value per column
    # took 46.
    instance_dict(instance).update(values)
    make_transient_to_detached(instance)
    session.add(instance)
    return instance


RATING = re.compile(r"\s*([1-5])\s*(?:/\s*5)?\s*[★⭐]*\s*")


def parse_rating(text: str) -> int | None:
    """A satisfaction answer: "4", "4/5", "5 ★" (the survey's buttons send the digit)."""
    match = RATING.fullmatch(text)
    return int(match.group(1)) if match else None


def clean_text(text: str, limit: int) -> str:
    """Validate customer text before anything is stored."""
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage("text is not valid Unicode", "error.message_empty") from None
    if not text.strip():
        raise InvalidMessage("message is empty", "error.message_empty")
    if len(text) > limit:
        raise InvalidMessage(f"message is longer than {limit} characters",
                             "error.message_too_long", limit=limit)
    return text


class Pipeline:
    def __init__(self, *, settings: Settings, db: Database, clock: Clock, dialogue: Dialogue,
                 sla: SlaRules, on_outbox: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.dialogue = dialogue
        self.sla = sla
        self.on_outbox = on_outbox or (lambda: None)
        # Channels whose webhook answers with the reply itself, and how long it may wait.
        self.passive_reply_windows: dict[str, timedelta] = {}
        # Channels that may hold replies until the customer writes (``holds_replies``);
        # None: not known, so every channel's held replies are looked for.
        self.holding_channels: set[str] | None = None

    async def handle(self, inbound: InboundMessage) -> Processed:
        """Receive and process in one transaction (channels that answer synchronously).

        One transaction instead of two saves a commit and re-reading what was just stored,
        and keeps the guarantees: the platform is acknowledged after the commit, so a crash
        before it leaves the platform to deliver again. When processing fails, the message
        is stored on its own, unprocessed, and the error raised, as ``receive`` then
        ``process`` would leave it: a redelivery or ``recover`` processes it later."""
        started = self.clock.now()
        try:
            received, processed = await self._receive(inbound, process=True)
        except InvalidMessage:
            metrics.inbound_rejected(inbound.channel)
            raise
        except _ProcessingFailed as failure:
            stored = await self.receive(inbound)
            log.error("%s message %d could not be processed; stored unprocessed for a "
                      "redelivery or the next start", inbound.channel, stored.message_id,
                      exc_info=failure.error)
            raise failure.error from failure.error.__cause__
        metrics.inbound(inbound.channel, duplicate=received.duplicate)
        if processed is None:
            # A redelivery of a message whose processing failed is processed now; one that
            # was processed already is a no-op (process() claims each message once).
            return await self.process(received.message_id)
        self._processed(processed, inbound.channel, received_at=started)
        return processed

    async def receive(self, inbound: InboundMessage) -> Received:
        try:
            received, _ = await self._receive(inbound, process=False)
        except InvalidMessage:
            metrics.inbound_rejected(inbound.channel)
            raise
        metrics.inbound(inbound.channel, duplicate=received.duplicate)
        return received

    async def _receive(self, inbound: InboundMessage, *,
                       process: bool) -> tuple[Received, Processed | None]:
        """Store the message (deduplicated, rate limited); with ``process`` also process it
        in the same transaction. The second value is None when nothing was processed."""
        inbound = fit_inbound(inbound)
        text = clean_text(inbound.text, self.settings.limits.max_message_chars)
        now = self.clock.now()
        try:
            async with self.db.writing(), self.db.sessions.begin() as session:
                connection = await session.connection()  # Core: no ORM execution to set up
                admission = await self._admit(connection, inbound, now)
                if admission.duplicate is not None:
                    return Received(*admission.duplicate, duplicate=True), None
                # A flooding chat: refused once a minute, then dropped silently, after this
                # transaction (bot/rate_limit.py).
                if not rate_limit.over_limit(self.settings.limits, admission.recent):
                    return await self._store(session, admission, inbound, text,
                                             now, process)
        except IntegrityError as exc:
            # Another process stored the same delivery first; or not a duplicate at all
            # (a row processing wrote was refused).
            async with self.db.sessions() as session:
                existing = await self._find_duplicate(session, inbound)
            if existing is not None:
                return existing, None
            if process:  # not a duplicate: the message is stored alone (``handle``), as
                raise _ProcessingFailed(exc) from exc  # with any failure in processing
            raise
        return await rate_limit.refuse(self.db, inbound, now), None

    async def _admit(self, connection: AsyncConnection, inbound: InboundMessage,
                     now: datetime) -> _Admission:
        """Is the message a duplicate, how many did the chat store in the last minute, and,
        when it is admitted, its contact touched (or created, on the chat's first message)
        and locked, and its open conversation touched, each read back (the conversation
        None when there is none open). PostgreSQL: one statement (two on a chat's first
        message), unless another message of the chat was stored after it began; then, and
        on SQLite (no data-modifying common table expressions), ``_admit_in_turn``."""
        # No key may be named after a column of contacts or conversations: SQLAlchemy
        # would SET it in ADMIT_AND_TOUCH's UPDATEs (tests/test_pipeline.py checks).
        parameters = {"external_id": inbound.external_id,
                      **rate_limit.count_parameters(self.settings.limits, inbound, now),
                      **_touch_parameters(inbound, now)}
        if not self.db.is_postgres:
            return await self._admit_in_turn(connection, parameters, inbound, now)
        row = (await connection.execute(ADMIT_AND_TOUCH, parameters)).one()
        contact = dict(zip(_CONTACT_KEYS, row[CONTACT_AT:CONVERSATION_AT], strict=True))
        conversation = dict(zip(_CONVERSATION_KEYS, row[CONVERSATION_AT:CONTACT_SEEN_AT],
                                strict=True))
        admission = _Admission(None if row[0] is None else (row[0], row[1]), row[2],
                               contact if contact["id"] is not None else None,
                               conversation if conversation["id"] is not None else None)
        if not self._admitted(admission) or admission.contact is not None:
            return admission
        if row[CONTACT_SEEN_AT] is None and await self._create_contact(
                connection, admission, inbound, now):
            return admission
        # Another message of the chat was stored after this statement's snapshot was taken
        # (it changed the contact, or created it: the INSERT waited for it). Its message
        # was not counted: wait for it holding the contact's lock, then count again in
        # statements that see it (tests/test_hostile.py, a flood all at once).
        await connection.execute(LOCK_CONTACT, parameters)
        return await self._admit_in_turn(connection, parameters, inbound, now)

    async def _admit_in_turn(self, connection: AsyncConnection, parameters: dict[str, Any],
                             inbound: InboundMessage, now: datetime) -> _Admission:
        """``_admit`` one statement at a time, when no other message of the chat is being
        stored: SQLite (one writer at a time), or PostgreSQL holding the contact's lock."""
        duplicate_id, duplicate_in, recent = (
            await connection.execute(ADMISSION, parameters)).one()
        admission = _Admission(None if duplicate_id is None else (duplicate_id, duplicate_in),
                               recent, None, None)
        if not self._admitted(admission):
            return admission
        admission.contact = (await connection.execute(
            TOUCH_CONTACT, parameters)).mappings().first()
        if admission.contact is None:
            if await self._create_contact(connection, admission, inbound, now):
                return admission
            # PostgreSQL (SQLite has one writer at a time): another message of the chat
            # created the contact since this count; with no contact to lock (erased since
            # this message's first statement) the count held no lock. Count again, holding it.
            await connection.execute(LOCK_CONTACT, parameters)
            return await self._admit_in_turn(connection, parameters, inbound, now)
        admission.conversation = (await connection.execute(TOUCH_OPEN_CONVERSATION, {
            "of_contact": admission.contact["id"], "now": now})).mappings().first()
        return admission

    def _admitted(self, admission: _Admission) -> bool:
        """Neither a stored delivery nor over the chat's rate limit."""
        return admission.duplicate is None and not rate_limit.over_limit(
            self.settings.limits, admission.recent)

    async def _create_contact(self, connection: AsyncConnection, admission: _Admission,
                              inbound: InboundMessage, now: datetime) -> bool:
        """The chat's first message: its contact created (into ``admission``, locked, as
        every new row is). False when another transaction created it meanwhile (the
        PostgreSQL INSERT then waits for it to commit and does nothing)."""
        insert_contact = INSERT_CONTACT_PG if self.db.is_postgres else INSERT_CONTACT_SQLITE
        admission.contact = (await connection.execute(insert_contact, {
            "channel": inbound.channel, "chat": inbound.chat, "created_at": now,
            "last_seen_at": now, "display_name": inbound.user_name or None,
            "language_hint": inbound.language_hint or None})).mappings().first()
        admission.created = admission.contact is not None
        return admission.created

    async def _store(self, session: AsyncSession,
                     admission: _Admission, inbound: InboundMessage, text: str,
                     now: datetime, process: bool) -> tuple[Received, Processed | None]:
        # Touched or created and locked by _admit: as the chat's previous message's
        # processing left it, not as it was before that committed.
        assert admission.contact is not None
        contact = _persistent(session, Contact(), admission.contact)
        conversation = await self._touched_conversation(
            session, contact, admission.created, admission.conversation, now, text,
            lock=process)
        if self.holding_channels is None or inbound.channel in self.holding_channels:
            await session.execute(RELEASE_HELD, {"of_channel": inbound.channel,
                                                 "of_chat": inbound.chat, "now": now})
        message = Message(
            conversation_id=conversation.id, direction="in", sender="customer",
            channel=inbound.channel, external_id=inbound.external_id, text=text,
            attachments=list(inbound.attachments), created_at=now,
            processed_at=now if process else None,
        )
        session.add(message)
        if not process:
            await session.flush()
            return Received(message.id, conversation.id, duplicate=False), None
        # The message is inserted once, with what was understood: by queue_replies with its
        # replies, or by a handler's query (autoflush), or at the end.
        stored_in = conversation.id
        try:
            if conversation.status == "resolved":  # a survey's answer: not read locked
                conversation = await self._locked_conversation(session, conversation.id)
            else:  # what _locked_conversation would load, from what this session has
                set_committed_value(conversation, "contact", contact)
                set_committed_value(conversation, "customer", None if conversation.customer_id
                                    is None else await session.get(Customer,
                                                                   conversation.customer_id))
            processed = await self._process_claimed(session, message, conversation, now)
            await session.flush()  # what is left, so that a refused row fails in this try
        except IntegrityError as exc:
            if message.id is None:  # the message's own INSERT (with its replies' in
                raise               # queue_replies): another process stored the same delivery
                                    # meanwhile (_receive answers the duplicate), or a reply's
                                    # row failed (_receive then has the message stored alone)
            raise _ProcessingFailed(exc) from exc
        except Exception as exc:
            raise _ProcessingFailed(exc) from exc
        return Received(message.id, stored_in, duplicate=False), processed

    async def _find_duplicate(self, session: AsyncSession, inbound: InboundMessage) -> Received | None:
        row = (await session.execute(FIND_DUPLICATE, {
            "of_channel": inbound.channel, "external_id": inbound.external_id})).first()
        return Received(row.id, row.conversation_id, duplicate=True) if row else None

    async def _touched_conversation(self, session: AsyncSession, contact: Contact,
                                    created: bool,
                                    touched: Mapping[Any, Any] | None, now: datetime,
                                    text: str, *, lock: bool) -> Conversation:
        """The conversation a new message of the contact joins, marked as written to now:
        the open one (``touched`` by ``_admit`` in the usual case), else a survey awaiting
        this answer, else a new one. A contact ``created`` in this transaction has none
        yet."""
        if created:
            return await self._insert_conversation(session, contact, now, language=None,
                                                   inbound_at=now)
        if touched is not None:
            return _persistent(session, Conversation(), touched)
        # None open when _admit looked; on PostgreSQL its statement may have looked before
        # another transaction holding the contact committed one: this looks again, with a
        # fresh snapshot (tests/test_pipeline_races.py).
        conversation = await self._open_conversation(session, contact, now, text, lock=lock,
                                                     inbound_at=now)
        if conversation.last_inbound_at != now:  # one it found rather than created
            conversation.last_inbound_at = now
        if conversation.updated_at != now:
            conversation.updated_at = now
        return conversation

    async def _awaiting_rating(self, session: AsyncSession, contact: Contact,
                               text: str) -> Conversation | None:
        if parse_rating(text) is None:
            return None
        latest = (await session.execute(
            select(Conversation).where(Conversation.contact_id == contact.id)
            .order_by(Conversation.id.desc()).limit(1))).scalar_one_or_none()
        if latest is not None and latest.status == "resolved" \
                and latest.survey_sent_at is not None and latest.satisfaction is None:
            return latest
        return None

    async def _open_conversation(self, session: AsyncSession, contact: Contact,
                                 now: datetime, text: str = "", *, lock: bool = False,
                                 inbound_at: datetime | None = None) -> Conversation:
        """The contact's open conversation, else a new one (written to by the customer at
        ``inbound_at``). With ``lock`` an open one is read locked, as
        ``_locked_conversation`` would (one worker at a time per conversation)."""
        query = OPEN_CONVERSATION_LOCKED if lock and self.db.is_postgres else OPEN_CONVERSATION
        conversation = (await session.execute(
            query, {"contact_id": contact.id})).scalar_one_or_none()
        if conversation is None:
            awaiting = await self._awaiting_rating(session, contact, text)
            if awaiting is not None:
                return awaiting  # the answer to a satisfaction survey joins its conversation
        if conversation is None:
            previous_language = (await session.execute(
                select(Conversation.language).where(Conversation.contact_id == contact.id)
                .order_by(Conversation.id.desc()).limit(1)
            )).scalar_one_or_none()
            conversation = await self._insert_conversation(
                session, contact, now, language=previous_language, inbound_at=inbound_at)
        return conversation

    async def _insert_conversation(self, session: AsyncSession, contact: Contact,
                                   now: datetime, language: str | None,
                                   inbound_at: datetime | None) -> Conversation:
        """A new open conversation of the contact (Core, read back with its defaults)."""
        row = (await (await session.connection()).execute(INSERT_CONVERSATION, {
            "contact_id": contact.id, "customer_id": contact.customer_id,
            "channel": contact.channel, "chat": contact.chat, "status": "open",
            "language": language, "created_at": now, "updated_at": now,
            "last_inbound_at": inbound_at})).mappings().one()
        return _persistent(session, Conversation(), row)

    async def process(self, message_id: int) -> Processed:
        now = self.clock.now()
        async with self.db.writing(), self.db.sessions.begin() as session:
            if self.db.is_postgres:
                # Lock order, as storing takes them: the contact, the conversation, then
                # the message. A redelivery being stored by another process holds the
                # conversation row (receive updates it) while its insert waits on the
                # claim's new row version in the unique index: claiming first would
                # deadlock the two. And the next message of the chat being stored holds
                # the contact while it waits for the conversation, and processing may
                # write the contact (a verification attempt): locking only the
                # conversation first would deadlock those two.
                for locked in (Contact, Conversation):
                    await session.execute(
                        select(locked.id).select_from(Message)
                        .join(Conversation, Conversation.id == Message.conversation_id)
                        .join(Contact, Contact.id == Conversation.contact_id)
                        .where(Message.id == message_id, Message.processed_at.is_(None))
                        .with_for_update(of=locked))
            # Claim the message: of two workers (or a retry racing the first attempt),
            # exactly one gets the row; a rollback releases the claim.
            claimed = await session.execute(
                update(Message).where(Message.id == message_id, Message.processed_at.is_(None))
                .values(processed_at=now))
            message = await session.get(Message, message_id)
            if message is None:
                raise LookupError(f"message {message_id} not found")
            if claimed.rowcount == 0:  # type: ignore[attr-defined]
                return Processed(message.id, message.conversation_id, None)
            conversation = await self._locked_conversation(session, message.conversation_id)
            processed = await self._process_claimed(session, message, conversation, now)
        self._processed(processed, message.channel, received_at=message.created_at)
        return processed

    async def _process_claimed(self, session: AsyncSession, message: Message,
                               conversation: Conversation, now: datetime) -> Processed:
        """Understand and answer a message this worker claimed, its conversation locked."""
        if conversation.status == "resolved" and not await self._store_rating(
                session, conversation, message, now):
            # Not (or no longer) the survey's answer: the message starts a new
            # conversation, like any message after a resolution.
            fresh = await self._open_conversation(session, conversation.contact, now)
            message.conversation_id = fresh.id
            conversation = await self._locked_conversation(session, fresh.id)
        customer = conversation.customer
        if customer is None and conversation.contact.customer_id is not None:
            customer = await session.get(Customer, conversation.contact.customer_id)
            conversation.customer_id = conversation.contact.customer_id
        # respond() records what it understood on the message before any handler queries
        understanding, replies = await self.dialogue.respond(
            session, conversation, customer, message, now)
        if conversation.updated_at != now:  # storing it set it already: nothing to flush
            conversation.updated_at = now
        await self.sla.after_customer_message(session, conversation, message, replies, now)
        # The message (if nothing flushed it yet) with its replies in one INSERT, then
        # their outbox rows; the conversation's changes flushed in between, if any.
        outbox_ids = await self.queue_replies(session, conversation, replies, now,
                                              answering=message)
        if message.id is None:  # no replies to flush it with
            await session.flush()
        return Processed(message.id, conversation.id, understanding, replies, outbox_ids)

    def _processed(self, processed: Processed, channel: str, received_at: datetime) -> None:
        """After the commit: wake the dispatcher, count the processing time."""
        self.on_outbox()
        metrics.processed(channel, received_at, self.clock.now())

    async def _locked_conversation(self, session: AsyncSession,
                                   conversation_id: int) -> Conversation:
        query = (select(Conversation).where(Conversation.id == conversation_id)
                 .options(selectinload(Conversation.contact),
                          selectinload(Conversation.customer))
                 .execution_options(populate_existing=True))
        if self.db.is_postgres:  # one worker at a time per conversation
            query = query.with_for_update(of=Conversation)
        return (await session.execute(query)).scalar_one()

    async def _store_rating(self, session: AsyncSession, conversation: Conversation,
                            message: Message, now: datetime) -> bool:
        """Record a survey answer once (a conditional update: two quick answers cannot
        both count). False when the message is not a rating the conversation awaits."""
        rating = parse_rating(message.text)
        if rating is None or conversation.survey_sent_at is None:
            return False
        question = await session.scalar(select(func.max(Message.id)).where(
            Message.conversation_id == conversation.id, Message.kind == "survey"))
        if question is None or message.id < question:
            return False  # written before the question was asked: not an answer to it
        stored = await session.execute(
            update(Conversation).where(Conversation.id == conversation.id,
                                       Conversation.satisfaction.is_(None))
            .values(satisfaction=rating, satisfaction_at=now))
        await session.refresh(conversation)
        return stored.rowcount == 1  # type: ignore[attr-defined]

    async def queue_replies(self, session: AsyncSession, conversation: Conversation,
                            replies: list[Reply], now: datetime,
                            agent_id: int | None = None,
                            not_before: datetime | None = None,
                            answering: Message | None = None) -> list[int]:
        """Store each reply as an outbound message plus an outbox row, in the caller's tx.
        With ``agent_id`` the replies are an agent's words, relayed by the bot; with
        ``not_before`` customer-facing ones wait until then (quiet hours). Answers to a
        customer's message (``answering``, which may not be inserted yet) on a channel
        with passive replies wait out its window, so the webhook can return them in its
        response first.

        The rows are written with Core statements, not the ORM's unit of work, which cost
        about 1 ms of CPU per row written (docs/benchmarks.md, 2026-12-07): the message
        answered (when still pending) and the replies in one INSERT, the outbox rows in a
        second; whatever else the session holds (the conversation's changes) is flushed
        in between, only when there is something."""
        if not replies:
            return []
        passive = (self.passive_reply_windows.get(conversation.channel)
                   if answering is not None else None)
        owner = None
        if conversation.owner_id is not None and any(r.to == "agents" for r in replies):
            owner = await session.scalar(select(Agent.ref).where(
                Agent.id == conversation.owner_id))
        rows: list[dict[str, object]] = [{
            "conversation_id": conversation.id, "direction": "out",
            "sender": "agent" if agent_id else "bot", "agent_id": agent_id,
            "channel": conversation.channel, "external_id": None, "audience": reply.to,
            "kind": reply.kind, "text": reply.text, "lang": reply.lang,
            "intent": reply.intent, "confidence": None, "entities": {}, "urgent": False,
            "attachments": [], "created_at": now, "processed_at": now,
        } for reply in replies]
        pending = answering if answering is not None and answering.id is None else None
        if pending is not None:
            session.expunge(pending)  # written here instead of by the next flush
            rows.insert(0, _column_values(pending))
        connection = await session.connection()
        message_ids = list((await connection.execute(INSERT_MESSAGES, rows)).scalars())
        if pending is not None:
            _persistent(session, pending, {**rows[0], "id": message_ids.pop(0)})
        if session.new or session.dirty:
            await session.flush()
        in_reply_to = answering.id if answering is not None else None
        items: list[dict[str, object]] = []
        for reply, message_id in zip(replies, message_ids, strict=True):
            to_customer = reply.to == "customer"
            items.append({
                "message_id": message_id, "in_reply_to": in_reply_to if to_customer else None,
                "chat": conversation.chat,
                "channel": conversation.channel if to_customer else AGENTS_CHANNEL,
                "payload": {**reply_payload(reply), "customer_channel": conversation.channel,
                            "owner": owner, "conversation_id": conversation.id},
                "status": "pending", "attempts": 0,
                "next_attempt_at": (max(now, not_before or now) + (passive or timedelta(0))
                                    if to_customer else now),
                "last_error": None, "created_at": now, "sent_at": None, "external_id": None,
            })
        return list((await connection.execute(INSERT_OUTBOX_ITEMS, items)).scalars())

    async def recover(self) -> int:
        """Process every stored inbound message that a crash left unprocessed."""
        async with self.db.sessions() as session:
            pending = (await session.execute(
                select(Message.id).where(Message.direction == "in", Message.processed_at.is_(None))
                .order_by(Message.id)
            )).scalars().all()
        recovered = 0
        for message_id in pending:
            try:
                await self.process(message_id)
            except Exception:  # one message that cannot be processed must not hold up the
                # others, nor the start of the service that calls this
                log.exception("message %d could not be processed; it stays unprocessed and "
                              "is tried again at the next start or redelivery", message_id)
            else:
                recovered += 1
        if pending:
            log.info("recovered %d of %d unprocessed inbound message(s)", recovered,
                     len(pending))
        return recovered


def reply_payload(reply: Reply) -> dict[str, object]:
    return {
        "text": reply.text, "kind": reply.kind, "to": reply.to, "lang": reply.lang,
        "intent": reply.intent, "template": reply.template,
        "buttons": [{"label": b.label, "payload": b.payload} for b in reply.buttons],
        "attachments": list(reply.attachments),
    }
