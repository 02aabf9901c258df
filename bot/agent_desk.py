"""What the agents' side shows and looks up, independent of Slack: the hand-off card's
contents, the queue, an agent's own conversations, simple counts, and which conversation
a Slack thread or a case number refers to.

The Slack channel renders these views as Block Kit; keeping the queries here keeps the
platform module thin and lets the same views serve other front ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.business_hours import BusinessCalendar
from bot.config import SlaSettings
from bot.db.models import Agent, Case, Contact, Conversation, Customer, Message, Order, SlackThread
from bot.handoff import ACCOUNT_MANAGER_ROUTE

SUMMARY_MESSAGES = 6
SUMMARY_CHARS = 200
LISTED_ORDERS = 5


@dataclass(frozen=True)
class Person:
    ref: str
    name: str
    slack_user_id: str | None


@dataclass
class CardView:
    """Everything the hand-off card shows; built fresh from the database each time."""

    conversation_id: int
    channel: str
    chat: str
    status: str
    priority: str
    headline: str | None
    customer_ref: str | None
    company: str | None
    country: str | None
    strategic: bool
    language: str | None
    intent: str | None
    owner: Person | None
    transfer_to: Person | None
    account_manager: Person | None
    deadline: datetime | None
    summary: list[tuple[str, str, str | None]] = field(default_factory=list)  # sender, text, intent
    orders: list[tuple[str, str, str | None]] = field(default_factory=list)  # number, stage, eta
    cases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QueueEntry:
    conversation_id: int
    chat: str
    channel: str
    status: str
    priority: str
    company: str | None
    waiting_since: datetime | None
    owner: str | None


def first_response_target(priority: str, sla: SlaSettings) -> timedelta:
    return sla.first_response_urgent if priority == "urgent" else sla.first_response


def first_response_deadline(conversation: Conversation, customer: Customer | None,
                            sla: SlaSettings, calendar: BusinessCalendar) -> datetime | None:
    """When the first human answer is due: in working time, except for strategic
    customers, whose green channel is covered around the clock."""
    if conversation.handed_off_at is None:
        return None
    target = first_response_target(conversation.priority, sla)
    if customer is not None and customer.strategic:
        return conversation.handed_off_at + target
    return calendar.add_working(conversation.handed_off_at, target)


async def _person(session: AsyncSession, agent_id: int | None = None,
                  ref: str | None = None) -> Person | None:
    if agent_id is None and not ref:
        return None
    query = select(Agent).where(Agent.id == agent_id) if agent_id is not None \
        else select(Agent).where(Agent.ref == ref)
    agent = (await session.execute(query)).scalar_one_or_none()
    if agent is None:
        return Person(ref or "?", ref or "?", None)
    return Person(agent.ref, agent.name or agent.ref, agent.slack_user_id)


async def card_view(session: AsyncSession, conversation_id: int, sla: SlaSettings,
                    calendar: BusinessCalendar) -> CardView | None:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        return None
    customer = (await session.get(Customer, conversation.customer_id)
                if conversation.customer_id is not None else None)
    headline = await session.scalar(
        select(Message.text).where(Message.conversation_id == conversation_id,
                                   Message.audience == "agents", Message.kind == "handoff")
        .order_by(Message.id.desc()).limit(1))
    recent = (await session.execute(
        select(Message.sender, Message.text, Message.intent)
        .where(Message.conversation_id == conversation_id, Message.audience == "customer")
        .order_by(Message.id.desc()).limit(SUMMARY_MESSAGES))).all()
    orders: list[tuple[str, str, str | None]] = []
    if customer is not None:
        rows = (await session.execute(
            select(Order.number, Order.stage, Order.eta).where(Order.customer_id == customer.id)
            .order_by(Order.created_at.desc(), Order.id.desc()).limit(LISTED_ORDERS))).all()
        orders = [(r.number, r.stage, r.eta.isoformat() if r.eta else None) for r in rows]
    cases = list((await session.execute(
        select(Case.number).where(Case.conversation_id == conversation_id).order_by(Case.id)
    )).scalars())
    return CardView(
        conversation_id=conversation.id, channel=conversation.channel, chat=conversation.chat,
        status=conversation.status, priority=conversation.priority, headline=headline,
        customer_ref=customer.ref if customer else None,
        company=customer.company if customer else None,
        country=customer.country if customer else None,
        strategic=bool(customer and customer.strategic),
        language=conversation.language, intent=conversation.last_intent,
        owner=await _person(session, agent_id=conversation.owner_id),
        transfer_to=await _person(session, ref=(conversation.context or {}).get("transfer_to")),
        account_manager=await _person(session, ref=customer.account_manager if customer else None),
        deadline=first_response_deadline(conversation, customer, sla, calendar),
        summary=[(r.sender, r.text[:SUMMARY_CHARS], r.intent) for r in reversed(recent)],
        orders=orders, cases=cases,
    )


async def customer_label(session: AsyncSession, conversation_id: int) -> str:
    """Who speaks in relayed messages: the person's name, else the company, else the chat."""
    row = (await session.execute(
        select(Contact.display_name, Customer.contact_name, Customer.company, Conversation.chat)
        .join(Contact, Contact.id == Conversation.contact_id)
        .outerjoin(Customer, Customer.id == Conversation.customer_id)
        .where(Conversation.id == conversation_id))).first()
    if row is None:
        return "?"
    return str(row.display_name or row.contact_name or row.company or row.chat)


async def _entries(session: AsyncSession, *conditions: ColumnElement[bool]) -> list[QueueEntry]:
    priority_rank = case({"urgent": 0, "high": 1}, value=Conversation.priority, else_=2)
    rows = (await session.execute(
        select(Conversation.id, Conversation.chat, Conversation.channel, Conversation.status,
               Conversation.priority, Conversation.handed_off_at, Customer.company, Agent.ref)
        .outerjoin(Customer, Customer.id == Conversation.customer_id)
        .outerjoin(Agent, Agent.id == Conversation.owner_id)
        .where(*conditions)
        .order_by(priority_rank, Conversation.handed_off_at, Conversation.id).limit(50))).all()
    return [QueueEntry(r.id, r.chat, r.channel, r.status, r.priority, r.company,
                       r.handed_off_at, r.ref) for r in rows]


async def queue(session: AsyncSession) -> list[QueueEntry]:
    """Hand-offs nobody has taken yet, most urgent and oldest first."""
    return await _entries(session, Conversation.status == "handed_off",
                          Conversation.owner_id.is_(None))


async def owned_by(session: AsyncSession, agent_id: int) -> list[QueueEntry]:
    return await _entries(session, Conversation.status == "owned",
                          Conversation.owner_id == agent_id)


@dataclass(frozen=True)
class DeskCounts:
    waiting: int
    owned: int
    mine: int
    resolved_today: int
    resolved_today_by_me: int


async def counts(session: AsyncSession, agent_id: int | None, day_start: datetime) -> DeskCounts:
    """Counts for ``/support stats``, read from the conversations themselves."""
    def count(*conditions: ColumnElement[bool]) -> Select[int]:
        return select(func.count()).select_from(Conversation).where(*conditions)

    waiting = await session.scalar(count(Conversation.status == "handed_off"))
    owned = await session.scalar(count(Conversation.status == "owned"))
    mine = await session.scalar(count(Conversation.status == "owned",
                                      Conversation.owner_id == agent_id))
    resolved = await session.scalar(count(Conversation.status == "resolved",
                                          Conversation.resolved_at >= day_start))
    resolved_mine = await session.scalar(count(Conversation.status == "resolved",
                                               Conversation.resolved_at >= day_start,
                                               Conversation.owner_id == agent_id))
    return DeskCounts(int(waiting or 0), int(owned or 0), int(mine or 0), int(resolved or 0),
                      int(resolved_mine or 0))


async def find_by_reference(session: AsyncSession, reference: str) -> Conversation | None:
    """The conversation an agent means by a case number (CMP-…), ``#12``/``12`` (the
    conversation number on the card), or a chat id."""
    reference = reference.strip()
    conversation_id = await session.scalar(
        select(Case.conversation_id).where(func.upper(Case.number) == reference.upper()))
    if conversation_id is None and reference.lstrip("#").isdigit():
        conversation_id = int(reference.lstrip("#"))
    if conversation_id is not None:
        return await session.get(Conversation, conversation_id)
    return await current_conversation(session, reference)


async def current_conversation(session: AsyncSession, chat: str) -> Conversation | None:
    """The chat's current conversation: the newest one, open ones first."""
    return (await session.execute(
        select(Conversation).where(Conversation.chat == chat)
        .order_by(Conversation.status == "resolved", Conversation.id.desc()).limit(1)
    )).scalar_one_or_none()


async def conversation_for_thread(session: AsyncSession, slack_channel: str,
                                  thread_ts: str) -> int | None:
    return await session.scalar(select(SlackThread.conversation_id).where(
        SlackThread.slack_channel == slack_channel, SlackThread.thread_ts == thread_ts))


async def threads_of(session: AsyncSession, conversation_id: int) -> list[SlackThread]:
    """The conversation's Slack threads, oldest first; the last is where relays go."""
    return list((await session.execute(
        select(SlackThread).where(SlackThread.conversation_id == conversation_id)
        .order_by(SlackThread.id))).scalars())


async def remember_thread(session: AsyncSession, conversation_id: int, slack_channel: str,
                          thread_ts: str, now: datetime) -> None:
    session.add(SlackThread(conversation_id=conversation_id, slack_channel=slack_channel,
                            thread_ts=thread_ts, created_at=now))
    conversation = await session.get(Conversation, conversation_id)
    if conversation is not None:
        conversation.slack_channel, conversation.slack_thread_ts = slack_channel, thread_ts


async def set_route(session: AsyncSession, conversation_id: int, route: str) -> None:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is not None:
        conversation.handoff_route = route


async def unclaimed_green_channel(session: AsyncSession, now: datetime, sla: SlaSettings,
                                  calendar: BusinessCalendar) -> list[int]:
    """Strategic customers' hand-offs that their account manager has not taken within the
    first-response target: their card is still only in the manager's direct messages.
    Read through the (status, handoff_route) index: only hand-offs still with a manager."""
    horizon = now - min(sla.first_response, sla.first_response_urgent)
    rows = (await session.execute(
        select(Conversation, Customer)
        .join(Customer, Customer.id == Conversation.customer_id)
        .where(Conversation.status == "handed_off",
               Conversation.handoff_route == ACCOUNT_MANAGER_ROUTE,
               Conversation.owner_id.is_(None), Conversation.handed_off_at <= horizon)
        .order_by(Conversation.handed_off_at).limit(500))).all()
    due: list[int] = []
    for conversation, customer in rows:
        deadline = first_response_deadline(conversation, customer, sla, calendar)
        if deadline is not None and deadline <= now:
            due.append(conversation.id)
    return due


async def next_green_channel_check(session: AsyncSession, sla: SlaSettings,
                                   calendar: BusinessCalendar) -> datetime | None:
    """When the next green-channel hand-off falls due (replay runs the job exactly then)."""
    rows = (await session.execute(
        select(Conversation, Customer)
        .join(Customer, Customer.id == Conversation.customer_id)
        .where(Conversation.status == "handed_off",
               Conversation.handoff_route == ACCOUNT_MANAGER_ROUTE,
               Conversation.owner_id.is_(None)).limit(500))).all()
    deadlines = [first_response_deadline(c, customer, sla, calendar) for c, customer in rows]
    return min((d for d in deadlines if d is not None), default=None)


def day_start(now: datetime, calendar: BusinessCalendar) -> datetime:
    """Midnight today in the calendar's time zone."""
    return now.astimezone(calendar.timezone).replace(hour=0, minute=0, second=0, microsecond=0)
