"""Personal data: a customer's data rights (export, erasure) and the retention purge
(SPEC §7: older than three years). Both kinds of removal use the same helpers below.

What is personal here: what people wrote (message texts, attachments, entities, case
descriptions and evidence, the texts waiting in the outbox, what flows and conversation
context remembered), who they are (names, e-mail, phone, chat display names) and their chat
ids. What stays, so the numbers still add up: rows, timestamps, statuses, intents,
languages, channels, SLA clocks, ratings, ownership events, quotes, order facts. The
retention purge keeps company names (a business, not a person); an erasure on request
replaces the company name too, since a small company's name can name its owner.

See docs/privacy.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, String, and_, cast, func, inspect, literal, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import (
    Agent,
    Case,
    Contact,
    Conversation,
    Customer,
    Message,
    Order,
    OrderEvent,
    OutboxItem,
    OwnershipEvent,
    Quote,
    SlaClock,
)

if TYPE_CHECKING:
    from bot.config import Settings

ERASED_CHAT = "erased-"  # chat ids become "erased-<contact id>": unique, meaningless
ERASED_COMPANY = "erased customer "  # + the customer's id
EXPIRED_REASON = "expired: personal data retention"
ERASED_REASON = "erased"
EXPORT_FORMAT = "supportbot.customer-export/1"


class CustomerNotFound(LookupError):
    """No customer with this id (``customers.ref``)."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"no customer with id {ref!r}")
        self.ref = ref


# --- shared helpers: each removes one kind of personal data from the rows matching ``where``
# and returns how many rows it changed; rows already clean are not matched again, so every
# helper (and everything built on them) is idempotent.

def _count(result: Any) -> int:
    return int(result.rowcount or 0) if isinstance(result, CursorResult) else 0


def _not_empty(column: Any, empty: str) -> ColumnElement[bool]:
    """A JSON column that holds more than an empty ``{}`` / ``[]``."""
    return cast(column, String) != empty


async def _update(session: AsyncSession, statement: Any) -> int:
    return _count(await session.execute(
        statement.execution_options(synchronize_session=False)))


async def blank_messages(session: AsyncSession, *where: Any) -> int:
    """What was written: texts, attachments and the entities read from them. The rows stay
    (direction, sender, intent, language, times) for the figures."""
    return await _update(session, update(Message).where(
        *where, or_(Message.text != "", _not_empty(Message.attachments, "[]"),
                    _not_empty(Message.entities, "{}")))
        .values(text="", attachments=[], entities={}))


async def give_up_outbox(session: AsyncSession, reason: str, *where: Any) -> int:
    """Messages not delivered yet are never sent: they become ``failed`` with ``reason``."""
    return await _update(session, update(OutboxItem).where(
        *where, OutboxItem.status.in_(("pending", "held")))
        .values(status="failed", last_error=reason))


async def blank_outbox(session: AsyncSession, *where: Any) -> int:
    """The payloads (texts, buttons, attachments) of outbox rows, and the platforms' error
    texts, which can quote them."""
    quoted_error = and_(OutboxItem.last_error.is_not(None),
                        OutboxItem.last_error != ERASED_REASON)
    changed = await _update(session, update(OutboxItem).where(*where, quoted_error)
                            .values(last_error=None))
    return changed + await _update(session, update(OutboxItem).where(
        *where, _not_empty(OutboxItem.payload, "{}")).values(payload={}))


async def blank_order_notes(session: AsyncSession, customer_id: int) -> int:
    """Free-text notes in the customer's order events (stages, dates and numbers stay)."""
    changed = 0
    events = (await session.execute(
        select(OrderEvent).where(OrderEvent.order_id.in_(
            select(Order.id).where(Order.customer_id == customer_id))))).scalars()
    for event in events:
        if "note" in (event.changes or {}):
            event.changes = {k: v for k, v in event.changes.items() if k != "note"}
            changed += 1
    return changed


async def blank_cases(session: AsyncSession, *where: Any) -> int:
    """Case descriptions and evidence; kind, category, status, times and rating stay."""
    return await _update(session, update(Case).where(
        *where, or_(Case.description.is_not(None), _not_empty(Case.evidence, "[]")))
        .values(description=None, evidence=[]))


async def forget_conversation_state(session: AsyncSession, *where: Any) -> int:
    """What flows and the conversation context remembered (an e-mail typed into the
    verification flow, for one)."""
    return await _update(session, update(Conversation).where(
        *where, or_(_not_empty(Conversation.flow_state, "{}"),
                    _not_empty(Conversation.context, "{}")))
        .values(flow_state={}, context={}, flow=None))


async def anonymise_customers(session: AsyncSession, now: datetime, *where: Any,
                              company: Any = None) -> int:
    """Contact name, e-mail and phone; with ``company`` (a value or SQL expression) the
    company name is replaced too. Marks the record ``erased_at``."""
    personal: list[Any] = [Customer.contact_name.is_not(None), Customer.email.is_not(None),
                           Customer.phone.is_not(None)]
    values: dict[str, Any] = {"contact_name": None, "email": None, "phone": None,
                              "erased_at": now}
    if company is not None:
        personal += [Customer.company.is_distinct_from(company), Customer.erased_at.is_(None)]
        values["company"] = company
    return await _update(session, update(Customer).where(*where, or_(*personal)).values(**values))


async def erase_contacts(session: AsyncSession, contacts: Iterable[Contact]) -> int:
    """Chat ids and display names. A contact's chat becomes ``erased-<contact id>``, and so
    do the chat of its conversations and of their outbox rows; message ids composed from the
    chat (the web chat's ``<chat>:<client id>``) lose it too."""
    changed = 0
    for contact in contacts:
        erased = f"{ERASED_CHAT}{contact.id}"
        old = contact.chat
        conversations = select(Conversation.id).where(Conversation.contact_id == contact.id)
        await _update(session, update(Conversation).where(
            Conversation.contact_id == contact.id, Conversation.chat != erased)
            .values(chat=erased))
        await _update(session, update(OutboxItem).where(
            OutboxItem.message_id.in_(
                select(Message.id).where(Message.conversation_id.in_(conversations))),
            OutboxItem.chat != erased).values(chat=erased))
        if not old.startswith(ERASED_CHAT):
            prefix = f"{old}:"
            await _update(session, update(Message).where(
                Message.conversation_id.in_(conversations),
                Message.external_id.startswith(prefix, autoescape=True))
                .values(external_id=literal(f"{erased}:", String)
                        + func.substr(Message.external_id, len(prefix) + 1, type_=String)))
        if (old, contact.display_name, contact.language_hint) != (erased, None, None):
            contact.chat, contact.display_name, contact.language_hint = erased, None, None
            changed += 1
    await session.flush()
    return changed


# --- the retention purge ------------------------------------------------------------------------

async def purge_expired(session: AsyncSession, cutoff: datetime, now: datetime) -> int:
    """Remove personal data last touched before ``cutoff``; returns rows changed.
    Idempotent: rows already purged are not matched again."""
    changed = await blank_messages(session, Message.created_at < cutoff)
    # A message still undelivered after the retention period is given up, then purged.
    await give_up_outbox(session, EXPIRED_REASON, OutboxItem.created_at < cutoff)
    changed += await blank_outbox(session, OutboxItem.created_at < cutoff)
    await _update(session, update(OutboxItem).where(
        OutboxItem.created_at < cutoff, OutboxItem.chat.not_like(f"{ERASED_CHAT}%"))
        .values(chat=ERASED_CHAT))
    changed += await blank_cases(session, Case.opened_at < cutoff)
    # Conversations untouched since the cutoff.
    changed += await forget_conversation_state(session, Conversation.updated_at < cutoff)

    recent_conversation = select(Conversation.id).where(
        Conversation.customer_id == Customer.id, Conversation.updated_at >= cutoff).exists()
    recent_order = select(Order.id).where(Order.customer_id == Customer.id,
                                          Order.updated_at >= cutoff).exists()
    changed += await anonymise_customers(
        session, now, Customer.updated_at < cutoff, Customer.erased_at.is_(None),
        ~recent_conversation, ~recent_order)

    # Chat ids: of people who wrote, last before the cutoff; of contacts who never wrote,
    # only when nobody needs them (no customer, or a customer whose data is erased), since
    # an imported chat of an active customer is how the bot reaches them.
    erased_customer = select(Customer.id).where(Customer.id == Contact.customer_id,
                                                Customer.erased_at.is_not(None)).exists()
    stale_contacts = list((await session.execute(
        select(Contact).where(
            Contact.chat.not_like(f"{ERASED_CHAT}%"),
            or_(Contact.last_seen_at < cutoff,
                Contact.last_seen_at.is_(None) & (Contact.created_at < cutoff)
                & (Contact.customer_id.is_(None) | erased_customer)))
    )).scalars())
    changed += await erase_contacts(session, stale_contacts)
    return changed


# --- one customer: what is stored, and erasure on request -------------------------------------

async def _customer(session: AsyncSession, ref: str) -> Customer:
    customer = (await session.execute(
        select(Customer).where(Customer.ref == ref))).scalar_one_or_none()
    if customer is None:
        raise CustomerNotFound(ref)
    return customer


async def _lock_contacts(session: AsyncSession, customer: Customer) -> list[int]:
    """Lock (PostgreSQL: ``FOR UPDATE``, in id order) every contact an erasure of the
    customer may write, and return their ids: the chats linked to them and the chats of the
    conversations linked to them, a superset of what ``_contacts`` then picks. Contacts
    first, like every path that stores or processes a message (contact, conversation,
    message; docs/architecture.md, "Lock order"). ``FOR UPDATE`` rather than a weaker mode:
    the erasure changes ``chat``, part of a unique key, which takes that lock anyway.

    Once these rows are locked, nothing can add to the customer's conversations on these
    chats: a message is stored (a conversation created, or linked to the customer by its
    processing) only while its contact is locked (``handle`` and ``receive`` both update
    the contact first), and the proactive messages of bot/jobs.py insert a conversation
    referencing the contact, which waits for this lock too."""
    theirs = select(Conversation.contact_id).where(Conversation.customer_id == customer.id)
    return list((await session.execute(
        select(Contact.id).where(or_(Contact.customer_id == customer.id,
                                     Contact.id.in_(theirs)))
        .order_by(Contact.id).with_for_update())).scalars())


async def _conversation_ids(session: AsyncSession, customer: Customer, lock: bool = False,
                            contact_ids: list[int] | None = None) -> list[int]:
    """The customer's conversations: linked to them, or unlinked ones on a chat linked to
    them (a chat that proved ownership later may have earlier conversations without the
    link). A conversation linked to another customer is theirs, even on a shared chat.
    With ``contact_ids`` (the contacts ``_lock_contacts`` locked) only those on these
    chats; with ``lock`` read ``FOR UPDATE`` in id order (PostgreSQL), after the contacts."""
    linked_chats = select(Contact.id).where(Contact.customer_id == customer.id)
    query = select(Conversation.id).where(or_(
        Conversation.customer_id == customer.id,
        and_(Conversation.customer_id.is_(None), Conversation.contact_id.in_(linked_chats)))
    ).order_by(Conversation.id)
    if contact_ids is not None:
        query = query.where(Conversation.contact_id.in_(contact_ids))
    if lock:
        query = query.with_for_update()
    return list((await session.execute(query)).scalars())


async def _contacts(session: AsyncSession, customer: Customer, conversation_ids: list[int],
                    contact_ids: list[int] | None = None) -> list[Contact]:
    """Chats linked to the customer, and unlinked chats their conversations came from (a
    chat linked to another customer since is that customer's, and is left alone). With
    ``contact_ids`` only among those (the erasure writes only contacts it locked first)."""
    used = select(Conversation.contact_id).where(Conversation.id.in_(conversation_ids))
    query = select(Contact).where(or_(
        Contact.customer_id == customer.id,
        and_(Contact.customer_id.is_(None), Contact.id.in_(used)))).order_by(Contact.id)
    if contact_ids is not None:
        query = query.where(Contact.id.in_(contact_ids))
    return list((await session.execute(query)).scalars())


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _row(obj: Any, **extra: Any) -> dict[str, Any]:
    """Every stored column of a row, JSON-serialisable, plus ``extra``."""
    data = {attr.key: _jsonable(getattr(obj, attr.key))
            for attr in inspect(obj).mapper.column_attrs}
    data.update(extra)
    return data


async def export_customer(session: AsyncSession, ref: str, *,
                          now: datetime | None = None) -> dict[str, Any]:
    """Everything stored about the customer ``ref`` (``customers.ref``, e.g. "C-100"), as
    JSON-serialisable data: times in ISO 8601, money and quantities as strings.
    Raises ``CustomerNotFound``."""
    customer = await _customer(session, ref)
    conversation_ids = await _conversation_ids(session, customer)
    contacts = await _contacts(session, customer, conversation_ids)
    agents = {agent.id: agent.ref for agent in (await session.execute(select(Agent))).scalars()}

    async def rows(model: Any, *where: Any) -> list[Any]:
        return list((await session.execute(
            select(model).where(*where).order_by(model.id))).scalars())

    in_conversations = Conversation.id.in_(conversation_ids)
    messages = await rows(Message, Message.conversation_id.in_(conversation_ids))
    clocks = await rows(SlaClock, SlaClock.conversation_id.in_(conversation_ids))
    ownership = await rows(OwnershipEvent, OwnershipEvent.conversation_id.in_(conversation_ids))
    outbox = await rows(OutboxItem, OutboxItem.message_id.in_(
        select(Message.id).where(Message.conversation_id.in_(conversation_ids))))
    outbox_of = {item.message_id: item for item in outbox}

    def grouped(items: list[Any], conversation_id: int) -> list[Any]:
        return [item for item in items if item.conversation_id == conversation_id]

    conversations = []
    for conversation in await rows(Conversation, in_conversations):
        conversation_messages = grouped(messages, conversation.id)
        conversations.append(_row(
            conversation, owner=agents.get(conversation.owner_id or -1),
            messages=[_row(m, agent=agents.get(m.agent_id or -1)) for m in conversation_messages],
            sla_clocks=[_row(c) for c in grouped(clocks, conversation.id)],
            ownership_events=[
                _row(e, agent=agents.get(e.agent_id or -1),
                     target_agent=agents.get(e.target_agent_id or -1))
                for e in grouped(ownership, conversation.id)],
            outbox=[_row(outbox_of[m.id]) for m in conversation_messages if m.id in outbox_of]))

    orders = await rows(Order, Order.customer_id == customer.id)
    events = await rows(OrderEvent, OrderEvent.order_id.in_([o.id for o in orders]))
    mine = or_(Case.customer_id == customer.id, Case.conversation_id.in_(conversation_ids))
    return {
        "format": EXPORT_FORMAT,
        **({"exported_at": _jsonable(now)} if now is not None else {}),
        "customer": _row(customer),
        "contacts": [_row(contact) for contact in contacts],
        "conversations": conversations,
        "cases": [_row(case) for case in await rows(Case, mine)],
        "quotes": [_row(quote) for quote in await rows(Quote, or_(
            Quote.customer_id == customer.id, Quote.conversation_id.in_(conversation_ids)))],
        "orders": [_row(order, events=[_row(e) for e in events if e.order_id == order.id])
                   for order in orders],
    }


async def erase_customer(session: AsyncSession, ref: str, now: datetime) -> dict[str, Any]:
    """Remove or anonymise everything that identifies the customer ``ref``; keep what the
    figures need (rows, times, statuses, intents, languages, channels, ratings, SLA clocks,
    ownership events, quotes, orders). Undelivered messages to them are given up. Runs in
    the caller's transaction; idempotent. Raises ``CustomerNotFound``."""
    customer = await _customer(session, ref)
    # Lock order as everywhere else (PostgreSQL; SQLite has one writer at a time): the
    # contacts, then the conversations, then the rest. The conversations and contacts
    # erased are those on the locked chats: a chat linked to the customer by a message
    # committed in between (a verification at that very moment) is left as if linked just
    # after the erasure, rather than locked out of order (which could deadlock with the
    # chat's next message); running the erasure again takes it.
    locked = await _lock_contacts(session, customer)
    conversation_ids = await _conversation_ids(session, customer, lock=True,
                                               contact_ids=locked)
    contacts = await _contacts(session, customer, conversation_ids, contact_ids=locked)
    their_outbox = OutboxItem.message_id.in_(
        select(Message.id).where(Message.conversation_id.in_(conversation_ids)))
    changed = {
        "outbox": await blank_outbox(session, their_outbox),
        "outbox_given_up": await give_up_outbox(session, ERASED_REASON, their_outbox),
        "messages": await blank_messages(session, Message.conversation_id.in_(conversation_ids)),
        "cases": await blank_cases(session, or_(Case.customer_id == customer.id,
                                                Case.conversation_id.in_(conversation_ids))),
        "order_notes": await blank_order_notes(session, customer.id),
        "conversations": await forget_conversation_state(
            session, Conversation.id.in_(conversation_ids)),
        "contacts": await erase_contacts(session, contacts),
        "customer": await anonymise_customers(
            session, now, Customer.id == customer.id,
            company=literal(ERASED_COMPANY, String) + Customer.ref),
    }
    erased_at = await session.scalar(select(Customer.erased_at).where(Customer.id == customer.id)
                                     .execution_options(populate_existing=True))
    return {"customer": ref, "erased_at": _jsonable(erased_at),
            "already_erased": not any(changed.values()),
            "conversations": len(conversation_ids), "contacts": len(contacts),
            "changed": changed}


# --- for the command line -------------------------------------------------------------------

async def run_export(settings: Settings, ref: str) -> dict[str, Any]:
    from bot.service import open_database

    db = await open_database(settings)
    try:
        async with db.sessions() as session:
            return await export_customer(session, ref, now=datetime.now(UTC))
    finally:
        await db.dispose()


async def run_erase(settings: Settings, ref: str) -> dict[str, Any]:
    from bot.service import open_database

    db = await open_database(settings)
    try:
        async with db.sessions.begin() as session:
            return await erase_customer(session, ref, datetime.now(UTC))
    finally:
        await db.dispose()
