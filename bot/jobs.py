"""The scheduler's jobs (SPEC §6–§7). Each job does everything that is due at
``service.clock.now()`` and records what it did in the same transaction (a flag, a
timestamp, a processed-event key), so a job run twice — or by two processes — sends
nothing twice. The scheduler runs them periodically; ``supportbot replay`` runs them at
each ``tick``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.agent_desk import next_green_channel_check
from bot.db.models import (
    SHORT_LIVED_KEYS,
    Case,
    Contact,
    Conversation,
    Customer,
    Order,
    OrderEvent,
    OutboxItem,
    ProcessedEvent,
)
from bot.green_channel import escalate_unclaimed
from bot.handoff import AGENTS_CHANNEL, describe_customer_record
from bot.pipeline import reply_payload
from bot.privacy import purge_expired
from bot.service import Service
from bot.sla import owner_of
from bot.types import Reply, ReplyKind
from handlers.orders import order_values

log = logging.getLogger(__name__)
BATCH = 200
REPORT_CATCH_UP_DAYS = 7  # the monthly report still goes out if the 1st was missed


@dataclass(frozen=True)
class Job:
    name: str
    every: timedelta
    run: Callable[[Service], Awaitable[int]]
    # When the job next has work (None: nothing known to be due). Replay uses it to run the
    # job at that very moment; the scheduler simply runs jobs on their interval.
    next_due: Callable[[Service], Awaitable[datetime | None]] | None = None


# --- SLA ------------------------------------------------------------------------------------

async def sla_sweep(service: Service) -> int:
    """Warn before deadlines, record breaches once and escalate them."""
    now = service.clock.now()
    texts = service.knowledge.agent_texts
    sent = 0
    async with service.db.sessions.begin() as session:
        for clock in await service.sla.due_clocks(session, now, service.db.is_postgres):
            outcome = await service.sla.check(session, clock, now)
            if outcome is None:
                continue
            conversation = await session.get(Conversation, clock.conversation_id)
            if conversation is None:
                continue
            customer = (await session.get(Customer, conversation.customer_id)
                        if conversation.customer_id is not None else None)
            owner = await owner_of(session, conversation.id)
            calendar = service.sla.calendar(clock.calendar)
            deadline = clock.deadline_at.astimezone(calendar.timezone).strftime(
                "%a %d %b %H:%M %Z") if clock.deadline_at else "?"
            values = {"clock": texts[f"sla.clock.{clock.kind}"], "number": conversation.id,
                      "customer": describe_customer_record(customer, texts),
                      "deadline": deadline, "owner": owner.ref if owner else "—"}
            if outcome == "warning":
                left = calendar.working_between(now, clock.deadline_at) if clock.deadline_at \
                    else timedelta(0)
                reply = Reply(texts["sla.warning"].format(left=_span(left), **values),
                              kind="sla_warning", to="agents", template="sla.warning")
            elif clock.kind == "unclaimed_handoff":
                target = timedelta(minutes=clock.target_minutes)
                reply = Reply(texts["escalation.unclaimed"].format(target=_span(target), **values),
                              kind="escalation", to="agents", template="escalation.unclaimed")
            else:
                reply = Reply(texts["sla.breach"].format(**values), kind="sla_breach",
                              to="agents", template="sla.breach")
            await service.pipeline.queue_replies(session, conversation, [reply], now)
            sent += 1
    _wake(service, sent)
    return sent


def _span(delta: timedelta) -> str:
    total = round(delta.total_seconds() / 60)
    hours, minutes = divmod(total, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _wake(service: Service, sent: int) -> None:
    if sent:
        service.outbox.wake()


# --- customers' proactive messages ---------------------------------------------------------

def quiet_until(now: datetime, tz: ZoneInfo, quiet_hours: str) -> datetime:
    """``now`` if the customer may be messaged now, else the end of their quiet hours."""
    if not quiet_hours:
        return now
    start_text, end_text = quiet_hours.split("-")
    start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
    local = now.astimezone(tz)
    clock = local.time()
    inside = (start <= clock or clock < end) if start > end else (start <= clock < end)
    if not inside:
        return now
    end_day = local.date() + timedelta(days=1) if start > end and clock >= start else local.date()
    return datetime.combine(end_day, end, tzinfo=tz).astimezone(now.tzinfo)


async def customer_conversation(session: AsyncSession, customer: Customer,
                                now: datetime) -> Conversation | None:
    """Where the bot writes to a customer first: their latest conversation, else a new
    one on their most recently seen chat. None when the customer has no chat at all."""
    latest = (await session.execute(
        select(Conversation).where(Conversation.customer_id == customer.id)
        .order_by(Conversation.id.desc()).limit(1))).scalar_one_or_none()
    if latest is not None:
        return latest
    contact = (await session.execute(
        select(Contact).where(Contact.customer_id == customer.id)
        .order_by(Contact.last_seen_at.desc().nulls_last(), Contact.id).limit(1)
    )).scalar_one_or_none()
    if contact is None:
        return None
    conversation = Conversation(contact_id=contact.id, customer_id=customer.id,
                                channel=contact.channel, chat=contact.chat, status="open",
                                language=customer.language, created_at=now, updated_at=now,
                                flow_state={})
    session.add(conversation)
    await session.flush()
    return conversation


async def tell_customer(service: Service, session: AsyncSession, customer: Customer,
                        kind: ReplyKind, template: str, now: datetime,
                        agents_text: str | None = None, **values: object) -> bool:
    """Queue a proactive message in the customer's language, outside their quiet hours;
    with ``agents_text``, tell the conversation's agents too. False if no chat is known."""
    if customer.erased_at is not None:
        return False  # their data was erased on request: the bot does not write to them
    conversation = await customer_conversation(session, customer, now)
    if conversation is None:
        log.warning("customer %s has no chat: %s not sent", customer.ref, template)
        return False
    lang = conversation.language or customer.language or service.settings.languages.default
    text = service.knowledge.templates.render(template, lang, **values)
    proactive = service.settings.proactive
    tz = service.calendars["default"].timezone
    if customer.timezone:
        tz = ZoneInfo(customer.timezone)
    send_at = quiet_until(now, tz, proactive.quiet_hours) if proactive.respect_quiet_hours \
        else now
    replies = [Reply(text, kind=kind, lang=lang, template=template)]
    if agents_text:
        replies.append(Reply(agents_text, kind=kind, to="agents", lang=lang, template=template))
    await service.pipeline.queue_replies(session, conversation, replies, now,
                                         not_before=send_at)
    return True


async def order_alerts(service: Service) -> int:
    """Stage changes and ETA slips of more than ``[proactive] delay_threshold``, once per
    order event."""
    now = service.clock.now()
    sent = 0
    async with service.db.sessions.begin() as session:
        query = select(OrderEvent).where(OrderEvent.notified_at.is_(None)) \
            .order_by(OrderEvent.id).limit(BATCH)
        if service.db.is_postgres:
            query = query.with_for_update(skip_locked=True)
        for event in (await session.execute(query)).scalars():
            event.notified_at = now
            sent += await _each(f"order event {event.id}",
                                _alert_for_event(service, session, event, now), session)
    _wake(service, sent)
    return sent


async def _alert_for_event(service: Service, session: AsyncSession, event: OrderEvent,
                           now: datetime) -> int:
    order = await session.get(Order, event.order_id)
    customer = await session.get(Customer, order.customer_id) if order else None
    if order is None or customer is None:
        return 0
    texts = service.knowledge.agent_texts
    values = order_values(order)
    changes = event.changes or {}
    sent = 0
    if "stage" in changes:
        lang = await _customer_language(service, session, customer, now)
        status = service.knowledge.templates.render(f"order.stage.{order.stage}", lang, **values)
        sent += await tell_customer(service, session, customer, "alert", "alert.stage_changed",
                                    now, number=order.number, status=status)
    slip = _eta_slip(changes.get("eta"))
    if slip is not None and slip > service.settings.proactive.delay_threshold:
        eta = changes["eta"]
        lang = await _customer_language(service, session, customer, now)
        plan = str(changes.get("note") or "") or service.knowledge.templates.render(
            "alert.delay_plan", lang)
        agents_text = texts["alert.delay_agents"].format(
            order=order.number, customer=describe_customer_record(customer, texts),
            old_eta=eta["from"], new_eta=eta["to"], days=slip.days)
        sent += await tell_customer(
            service, session, customer, "alert", "alert.delay", now, agents_text=agents_text,
            number=order.number, old_eta=eta["from"], new_eta=eta["to"], days=slip.days,
            plan=plan)
    return sent


async def _each(what: str, work: Awaitable[int | bool], session: AsyncSession) -> int:
    """One item of a job in a savepoint: a bad record is logged and skipped (marked done
    by the caller), and the rest of the batch still goes out."""
    try:
        async with session.begin_nested():
            return int(await work)
    except (SQLAlchemyError, LookupError, ValueError, KeyError) as exc:
        log.error("job: %s skipped: %s", what, exc)
        return 0


def _eta_slip(change: object) -> timedelta | None:
    if not isinstance(change, dict) or not change.get("from") or not change.get("to"):
        return None
    try:
        return date.fromisoformat(str(change["to"])) - date.fromisoformat(str(change["from"]))
    except ValueError:
        return None


async def _customer_language(service: Service, session: AsyncSession, customer: Customer,
                             now: datetime) -> str:
    conversation = await customer_conversation(session, customer, now)
    return (conversation.language if conversation else None) or customer.language \
        or service.settings.languages.default


async def progress_notes(service: Service) -> int:
    """A production note every ``[proactive] progress_every`` while an order is in
    production."""
    now = service.clock.now()
    every = service.settings.proactive.progress_every
    sent = 0
    async with service.db.sessions.begin() as session:
        query = select(Order).where(
            Order.stage == "in_production",
            or_(Order.progress_noted_at <= now - every, Order.progress_noted_at.is_(None))
        ).order_by(Order.id).limit(BATCH)
        if service.db.is_postgres:
            query = query.with_for_update(skip_locked=True)
        for order in (await session.execute(query)).scalars():
            first_sight = order.progress_noted_at is None  # counting starts now
            order.progress_noted_at = now
            customer = await session.get(Customer, order.customer_id)
            if customer is None or first_sight:
                continue
            values = order_values(order)
            sent += await _each(order.number, tell_customer(
                service, session, customer, "alert", "alert.progress", now,
                number=order.number, progress=values["progress"], etd=values["etd"],
                eta=values["eta"]), session)
    _wake(service, sent)
    return sent


async def delivery_followups(service: Service) -> int:
    """The follow-up ``[sla] delivery_followup`` (48 h) after delivery, once per order."""
    now = service.clock.now()
    after = service.settings.sla.delivery_followup
    sent = 0
    async with service.db.sessions.begin() as session:
        query = select(Order).where(Order.delivered_at <= now - after,
                                    Order.followup_sent_at.is_(None)) \
            .order_by(Order.id).limit(BATCH)
        if service.db.is_postgres:
            query = query.with_for_update(skip_locked=True)
        for order in (await session.execute(query)).scalars():
            order.followup_sent_at = now
            customer = await session.get(Customer, order.customer_id)
            if customer is not None:
                sent += await _each(order.number, tell_customer(
                    service, session, customer, "followup", "followup.delivered", now,
                    number=order.number), session)
    _wake(service, sent)
    return sent


# --- the agents' monthly report ---------------------------------------------------------------

async def monthly_report(service: Service) -> int:
    """On the first day of a month (company time), last month's top-3 complaint categories
    to the agents' channel; once per month (a processed-event key)."""
    now = service.clock.now()
    calendar = service.calendars["default"]
    local = now.astimezone(calendar.timezone)
    month_start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    previous_start = (month_start - timedelta(days=1)).replace(day=1)
    month = previous_start.strftime("%Y-%m")
    if local.day > REPORT_CATCH_UP_DAYS:
        return 0  # a deployment started mid-month does not send last month's report late
    texts = service.knowledge.agent_texts
    try:
        async with service.db.sessions.begin() as session:
            session.add(ProcessedEvent(key=f"job:monthly_report:{month}", received_at=now))
            await session.flush()
            rows = (await session.execute(
                select(Case.category, func.count()).where(
                    Case.kind == "complaint", Case.opened_at >= previous_start,
                    Case.opened_at < month_start)
                .group_by(Case.category).order_by(func.count().desc(), Case.category))).all()
            total = sum(count for _, count in rows)
            if total:
                top = ", ".join(texts["report.category"].format(category=c or "—", count=n)
                                for c, n in rows[:3])
                text = texts["report.monthly"].format(month=month, total=total, top=top)
            else:
                text = texts["report.monthly_none"].format(month=month)
            reply = Reply(text, kind="report", to="agents", template="report.monthly")
            session.add(OutboxItem(
                message_id=None, channel=AGENTS_CHANNEL,
                chat=service.settings.slack.agents_channel,
                payload={**reply_payload(reply), "conversation_id": None},
                next_attempt_at=now, created_at=now))
    except IntegrityError:
        return 0  # this month's report was already made
    service.outbox.wake()
    return 1


# --- retention ----------------------------------------------------------------------------------

# How long the processed_events keys that guard only minutes are kept (SHORT_LIVED_KEYS,
# bot/db/models.py): long after anything they guard against could come again.
SHORT_LIVED_KEYS_KEPT = timedelta(days=1)


async def retention(service: Service) -> int:
    """Personal data past the retention period purged, and the short-lived
    ``processed_events`` keys forgotten once nothing they guard against can come again."""
    now = service.clock.now()
    cutoff = now - timedelta(days=service.settings.retention.personal_data_days)
    async with service.db.sessions.begin() as session:
        purged = await purge_expired(session, cutoff, now)
        forgotten = await forget_short_lived_keys(session, now)
    if purged or forgotten:
        log.info("retention: %d rows of personal data purged, %d short-lived keys forgotten",
                 purged, forgotten)
    return purged + forgotten


async def forget_short_lived_keys(session: AsyncSession, now: datetime) -> int:
    """``SHORT_LIVED_KEYS`` older than ``SHORT_LIVED_KEYS_KEPT`` deleted; how many."""
    result = await session.execute(delete(ProcessedEvent).where(
        or_(*(ProcessedEvent.key.startswith(prefix, autoescape=True)
              for prefix in SHORT_LIVED_KEYS)),
        ProcessedEvent.received_at < now - SHORT_LIVED_KEYS_KEPT))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def green_channel(service: Service) -> int:
    return await escalate_unclaimed(service)


# --- when each job next has work (for replay) ----------------------------------------------

async def _scalar(service: Service, query: Any) -> Any:
    async with service.db.sessions() as session:
        return await session.scalar(query)


async def _sweep_due(service: Service) -> datetime | None:
    async with service.db.sessions() as session:
        return await service.sla.next_check(session)


async def _green_channel_due(service: Service) -> datetime | None:
    async with service.db.sessions() as session:
        return await next_green_channel_check(session, service.settings.sla,
                                              service.calendars["default"])


async def _order_alerts_due(service: Service) -> datetime | None:
    return await _scalar(service, select(func.min(OrderEvent.at))
                         .where(OrderEvent.notified_at.is_(None)))


async def _followups_due(service: Service) -> datetime | None:
    first = await _scalar(service, select(func.min(Order.delivered_at)).where(
        Order.delivered_at.is_not(None), Order.followup_sent_at.is_(None)))
    return first + service.settings.sla.delivery_followup if first else None


async def _progress_due(service: Service) -> datetime | None:
    unseen = await _scalar(service, select(func.count()).select_from(Order).where(
        Order.stage == "in_production", Order.progress_noted_at.is_(None)))
    if unseen:
        return service.clock.now()
    last = await _scalar(service, select(func.min(Order.progress_noted_at))
                         .where(Order.stage == "in_production"))
    return last + service.settings.proactive.progress_every if last else None


async def _monthly_report_due(service: Service) -> datetime | None:
    tz = service.calendars["default"].timezone
    local = service.clock.now().astimezone(tz)
    month_start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    previous = (month_start - timedelta(days=1)).strftime("%Y-%m")
    done = await _scalar(service, select(ProcessedEvent.key).where(
        ProcessedEvent.key == f"job:monthly_report:{previous}"))
    if done is None and local.day <= REPORT_CATCH_UP_DAYS:
        return service.clock.now()
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    return next_month.astimezone(service.clock.now().tzinfo)


JOBS: tuple[Job, ...] = (
    Job("sla_sweep", timedelta(minutes=1), sla_sweep, _sweep_due),
    Job("green_channel", timedelta(minutes=1), green_channel, _green_channel_due),
    Job("order_alerts", timedelta(minutes=1), order_alerts, _order_alerts_due),
    Job("delivery_followups", timedelta(minutes=5), delivery_followups, _followups_due),
    Job("progress_notes", timedelta(hours=1), progress_notes, _progress_due),
    Job("monthly_report", timedelta(hours=1), monthly_report, _monthly_report_due),
    Job("retention", timedelta(days=1), retention),
)


async def run_all(service: Service) -> dict[str, int]:
    """Every job once, now (replay's ``tick``; a test's "the scheduler ran")."""
    return {job.name: await job.run(service) for job in JOBS}

