"""Response-time clocks (SPEC §6), measured in working time from the business calendar.

A clock starts when something is owed to the customer and stops when it is given:

| clock | starts | stops |
|---|---|---|
| ``unclaimed_handoff`` | hand-off (or release back to the queue) | an agent takes it |
| ``first_response`` | hand-off, if no person has answered yet | an agent's reply |
| ``next_response`` | a customer message after a person's first answer | an agent's reply |
| ``technical_contact`` | technical hand-off | an agent's reply (the remote contact) |
| ``complaint_solution`` | complaint hand-off | resolution |

``complaint_solution`` pauses while the team waits on the customer (an agent replied) and
resumes on the customer's next message with the working time it had left. Every clock ends
``met`` or ``breached`` with its working-time length. Bot replies and the bot's
acknowledgements never stop a clock. Strategic customers' clocks run on the ``always``
calendar (24 h coverage).

The sweep (a scheduler job) reads only clocks whose ``next_check_at`` has come: it warns
before the deadline (``[sla] warn_at`` of the target), and at the deadline records the
breach once and escalates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.business_hours import ALWAYS, BusinessCalendar
from bot.config import Settings
from bot.db.models import Agent, Case, Conversation, Customer, Message, SlaClock
from bot.handoff import ACCOUNT_MANAGER_ROUTE
from bot.types import Reply

log = logging.getLogger(__name__)

OPEN = ("running", "paused")
# A conversation's clocks in some statuses (and of some kinds): built once, as every
# customer message reads them (building a statement costs about as much as running it).
CLOCKS = (select(SlaClock)
          .where(SlaClock.conversation_id == bindparam("conversation_id"),
                 SlaClock.status.in_(bindparam("statuses", expanding=True)))
          .order_by(SlaClock.id))
CLOCKS_OF_KINDS = CLOCKS.where(SlaClock.kind.in_(bindparam("kinds", expanding=True)))
REPLY_STOPS = ("first_response", "next_response", "technical_contact")
SWEEP_BATCH = 500


QUESTION_MARKS = ("?", "？", "؟")


def asks_customer(text: str) -> bool:
    """Whether an agent's reply asks the customer something (in any of the languages)."""
    return any(mark in text for mark in QUESTION_MARKS)


def minutes(delta: timedelta) -> int:
    return max(0, round(delta.total_seconds() / 60))


@dataclass
class SlaRules:
    settings: Settings
    calendars: dict[str, BusinessCalendar]

    # --- targets ------------------------------------------------------------------------

    def target(self, kind: str, conversation: Conversation, intent: str | None) -> timedelta:
        sla = self.settings.sla
        urgent = conversation.priority == "urgent"
        if kind == "first_response":
            if urgent:
                return sla.first_response_urgent
            return sla.first_response_by_intent.get(intent or "", sla.first_response)
        if kind == "next_response":
            return sla.first_response_urgent if urgent else sla.next_response
        return {"complaint_solution": sla.complaint_solution,
                "technical_contact": sla.technical_contact,
                "unclaimed_handoff": sla.unclaimed_handoff}[kind]

    def calendar(self, name: str) -> BusinessCalendar:
        return self.calendars.get(name) or self.calendars["default"]

    # --- life of a clock --------------------------------------------------------------------

    async def _open_clocks(self, session: AsyncSession, conversation_id: int,
                           kinds: tuple[str, ...] | None = None,
                           statuses: tuple[str, ...] = OPEN) -> list[SlaClock]:
        parameters: dict[str, object] = {"conversation_id": conversation_id,
                                         "statuses": list(statuses)}
        if kinds is not None:
            parameters["kinds"] = list(kinds)
        query = CLOCKS_OF_KINDS if kinds is not None else CLOCKS
        return list((await session.execute(query, parameters)).scalars())

    async def start(self, session: AsyncSession, conversation: Conversation, kind: str,
                    now: datetime, *, intent: str | None = None,
                    case_id: int | None = None) -> SlaClock | None:
        """Start a clock unless one of that kind is already open (the oldest debt counts)."""
        if await self._open_clocks(session, conversation.id, (kind,)):
            return None
        customer = (await session.get(Customer, conversation.customer_id)
                    if conversation.customer_id is not None else None)
        calendar_name = ALWAYS if customer is not None and customer.strategic else "default"
        target = self.target(kind, conversation, intent)
        clock = SlaClock(conversation_id=conversation.id, case_id=case_id, kind=kind,
                         status="running", calendar=calendar_name,
                         target_minutes=minutes(target), started_at=now,
                         segment_started_at=now, consumed_minutes=0)
        self._schedule(clock, now)
        session.add(clock)
        await session.flush()
        return clock

    def _schedule(self, clock: SlaClock, now: datetime) -> None:
        """Deadline and warning time from the working time the clock has left."""
        calendar = self.calendar(clock.calendar)
        left = timedelta(minutes=clock.target_minutes - clock.consumed_minutes)
        clock.deadline_at = calendar.add_working(now, max(left, timedelta(0)))
        warn_after = timedelta(minutes=clock.target_minutes * self.settings.sla.warn_at
                               - clock.consumed_minutes)
        clock.warn_at = calendar.add_working(now, warn_after) if warn_after > timedelta(0) \
            else now
        clock.next_check_at = self._next_check(clock)

    @staticmethod
    def _next_check(clock: SlaClock) -> datetime | None:
        if clock.status != "running":
            return None
        if clock.warned_at is None and clock.breached_at is None and clock.warn_at is not None \
                and clock.deadline_at is not None and clock.warn_at < clock.deadline_at:
            return clock.warn_at
        return clock.deadline_at if clock.breached_at is None else None

    def _worked(self, clock: SlaClock, now: datetime) -> int:
        """Working minutes on the clock so far."""
        if clock.status != "running" or clock.segment_started_at is None:
            return clock.consumed_minutes
        calendar = self.calendar(clock.calendar)
        return clock.consumed_minutes + minutes(calendar.working_between(
            clock.segment_started_at, now))

    async def stop(self, session: AsyncSession, conversation_id: int, kinds: tuple[str, ...] | None,
                   now: datetime, closed: bool = False) -> list[SlaClock]:
        """End clocks as met or breached; with ``closed``, as neither (the conversation
        ended without the answer the clock waited for, e.g. resolved without a reply)."""
        stopped = await self._open_clocks(session, conversation_id, kinds)
        for clock in stopped:
            clock.working_minutes = self._worked(clock, now)
            if closed and clock.breached_at is None:
                clock.status, clock.stopped_at, clock.next_check_at = "closed", now, None
                continue
            if clock.status == "paused":  # its deadline is stale: judge by the time it ran
                late = clock.breached_at is not None or \
                    clock.working_minutes >= clock.target_minutes
            else:  # same boundary as the sweep's breach
                late = clock.breached_at is not None or (
                    clock.deadline_at is not None and now >= clock.deadline_at)
            clock.status = "breached" if late else "met"
            clock.stopped_at, clock.next_check_at = now, None
        return stopped

    async def pause(self, session: AsyncSession, conversation_id: int, kinds: tuple[str, ...],
                    now: datetime) -> None:
        for clock in await self._open_clocks(session, conversation_id, kinds, ("running",)):
            clock.consumed_minutes = self._worked(clock, now)
            clock.status, clock.paused_at, clock.next_check_at = "paused", now, None

    async def resume(self, session: AsyncSession, conversation_id: int, now: datetime) -> None:
        for clock in await self._open_clocks(session, conversation_id, statuses=("paused",)):
            clock.status, clock.paused_at, clock.segment_started_at = "running", None, now
            self._schedule(clock, now)

    # --- what moves the clocks ---------------------------------------------------------------

    async def after_customer_message(self, session: AsyncSession, conversation: Conversation,
                                     message: Message, replies: list[Reply],
                                     now: datetime) -> None:
        """The customer wrote and the bot answered (``replies``): resume what waited on
        the customer, start what a hand-off or an unanswered message owes."""
        if conversation.status != "open":
            # Only an agent's question pauses a clock, and an agent's conversation is
            # never open again: an open one (the bot's, most messages) has none to resume.
            await self.resume(session, conversation.id, now)
        for reply in replies:
            if reply.kind != "handoff" or reply.to != "agents":
                continue
            intent = reply.intent or conversation.last_intent
            # A green-channel hand-off has its own window with the account manager; its
            # unclaimed clock starts when it moves to the agents' channel.
            if conversation.owner_id is None and \
                    conversation.handoff_route != ACCOUNT_MANAGER_ROUTE:
                await self.start(session, conversation, "unclaimed_handoff", now)
            if not await self._person_answered(session, conversation.id):
                await self.start(session, conversation, "first_response", now, intent=intent)
            if reply.template == "reason.technical_support":
                await self.start(session, conversation, "technical_contact", now)
            if reply.template == "reason.complaint":
                case_id = await session.scalar(
                    select(Case.id).where(Case.conversation_id == conversation.id)
                    .order_by(Case.id.desc()).limit(1))
                await self.start(session, conversation, "complaint_solution", now,
                                 case_id=case_id)
        if conversation.status == "owned" and await self._person_answered(
                session, conversation.id) and not await self._open_clocks(
                session, conversation.id, ("first_response",)):
            await self.start(session, conversation, "next_response", now,
                             intent=message.intent)

    async def _person_answered(self, session: AsyncSession, conversation_id: int) -> bool:
        return bool(await session.scalar(select(exists().where(
            Message.conversation_id == conversation_id, Message.sender == "agent",
            Message.audience == "customer"))))

    async def after_take(self, session: AsyncSession, conversation_id: int, now: datetime) -> None:
        await self.stop(session, conversation_id, ("unclaimed_handoff",), now)

    async def after_agent_reply(self, session: AsyncSession, conversation_id: int,
                                now: datetime, text: str = "") -> None:
        """An agent answered: the response clocks are met. A question to the customer
        ("could you send photos?") means the team now waits on them: the complaint's
        solution clock pauses until they write again. A plain update does not pause it."""
        await self.stop(session, conversation_id, REPLY_STOPS, now)
        if asks_customer(text):
            await self.pause(session, conversation_id, ("complaint_solution",), now)

    async def after_release(self, session: AsyncSession, conversation: Conversation,
                            now: datetime) -> None:
        await self.start(session, conversation, "unclaimed_handoff", now)

    async def after_resolve(self, session: AsyncSession, conversation_id: int,
                            now: datetime) -> None:
        # A response clock still open at resolution was never answered by a person: it is
        # closed, not "met" (it would flatter the first-response figures); one already
        # breached stays breached.
        await self.stop(session, conversation_id, REPLY_STOPS, now, closed=True)
        await self.stop(session, conversation_id, None, now)

    # --- the sweep --------------------------------------------------------------------------

    async def due_clocks(self, session: AsyncSession, now: datetime,
                         lock: bool) -> list[SlaClock]:
        """Due clocks, each with its conversation locked first (PostgreSQL), in the order
        every writer uses — conversation, then clock — so the sweep and an agent's action
        never deadlock. A conversation busy right now is skipped until the next sweep."""
        rows = (await session.execute(
            select(SlaClock.id, SlaClock.conversation_id)
            .where(SlaClock.status == "running", SlaClock.next_check_at <= now)
            .order_by(SlaClock.next_check_at).limit(SWEEP_BATCH))).all()
        clocks: list[SlaClock] = []
        for clock_id, conversation_id in rows:
            if lock:
                locked = await session.scalar(
                    select(Conversation.id).where(Conversation.id == conversation_id)
                    .with_for_update(skip_locked=True))
                if locked is None:
                    continue
            query = select(SlaClock).where(SlaClock.id == clock_id) \
                .execution_options(populate_existing=True)
            if lock:
                query = query.with_for_update()
            clock = (await session.execute(query)).scalar_one()
            if clock.status == "running" and clock.next_check_at is not None \
                    and clock.next_check_at <= now:
                clocks.append(clock)
        return clocks

    async def next_check(self, session: AsyncSession) -> datetime | None:
        """When the sweep next has something to do (replay runs it exactly then)."""
        return await session.scalar(select(SlaClock.next_check_at).where(
            SlaClock.status == "running", SlaClock.next_check_at.is_not(None))
            .order_by(SlaClock.next_check_at).limit(1))

    async def check(self, session: AsyncSession, clock: SlaClock,
                    now: datetime) -> str | None:
        """Advance one due clock: returns ``"warning"`` or ``"breach"`` (recorded once by a
        conditional update, so two sweeps can never both report it), or None."""
        if clock.deadline_at is not None and now >= clock.deadline_at:
            done = await session.execute(
                update(SlaClock).where(SlaClock.id == clock.id, SlaClock.breached_at.is_(None))
                .values(breached_at=now, next_check_at=None)
                .execution_options(synchronize_session=False))
            await session.refresh(clock)
            return "breach" if done.rowcount == 1 else None  # type: ignore[attr-defined]
        if clock.warned_at is None:
            done = await session.execute(
                update(SlaClock).where(SlaClock.id == clock.id, SlaClock.warned_at.is_(None))
                .values(warned_at=now, next_check_at=clock.deadline_at)
                .execution_options(synchronize_session=False))
            await session.refresh(clock)
            return "warning" if done.rowcount == 1 else None  # type: ignore[attr-defined]
        clock.next_check_at = self._next_check(clock)
        return None


async def owner_of(session: AsyncSession, conversation_id: int) -> Agent | None:
    return (await session.execute(
        select(Agent).join(Conversation, Conversation.owner_id == Agent.id)
        .where(Conversation.id == conversation_id))).scalar_one_or_none()
