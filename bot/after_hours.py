"""The after-hours responder: self-service goes on, and once per off-hours period a
conversation learns when the team is back, whom to call in an emergency, and that its
message is recorded. Urgent messages after hours page the on-call agent."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select

from bot.business_hours import BusinessCalendar
from bot.db.models import Message
from bot.handoff import describe_customer
from bot.types import Reply

if TYPE_CHECKING:  # handlers import this module; at run time no import is needed
    from handlers.base import HandlerContext

CONTEXT_KEY = "after_hours_notice_until"  # the opening that ends the period already told


def customer_zone(ctx: HandlerContext) -> ZoneInfo | None:
    name = ctx.customer.timezone if ctx.customer else None
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def describe_opening(ctx: HandlerContext, opening: datetime, calendar: BusinessCalendar) -> str:
    """The next opening in the customer's own timezone when known, else the company's."""
    zone = customer_zone(ctx) or calendar.timezone
    local = opening.astimezone(zone)
    return ctx.text("after_hours.opening", weekday=ctx.text(f"weekday.{local.weekday()}"),
                    date=local.date().isoformat(), time=local.strftime("%H:%M"),
                    timezone=str(zone.key))


async def after_hours_replies(ctx: HandlerContext, calendar: BusinessCalendar) -> list[Reply]:
    settings = ctx.settings.after_hours
    if not settings.enabled or calendar.is_open(ctx.now):
        return []
    replies: list[Reply] = []
    opening = calendar.next_opening(ctx.now)
    told_until = ctx.recall(CONTEXT_KEY)
    already_told = told_until is not None and datetime.fromisoformat(told_until) > ctx.now
    if not already_told and not await _agent_answered_recently(ctx):
        ctx.remember(CONTEXT_KEY, opening.isoformat())
        replies.append(ctx.reply("after_hours.notice", kind="after_hours",
                                 opening=describe_opening(ctx, opening, calendar),
                                 emergency=ctx.settings.company.emergency_contact))
    if ctx.understanding.urgent:
        replies.append(Reply(
            text=ctx.knowledge.agent_texts["escalation.after_hours_urgent"].format(
                customer=describe_customer(ctx), channel=ctx.conversation.channel, chat=ctx.conversation.chat,
                language=ctx.lang, last_message=ctx.message.text[:500]),
            kind="escalation", to="agents", lang=ctx.lang, intent=ctx.understanding.intent,
            template="escalation.after_hours_urgent"))
    return replies


async def _agent_answered_recently(ctx: HandlerContext) -> bool:
    since = ctx.now - ctx.settings.after_hours.agent_recent
    found = await ctx.session.scalar(
        select(Message.id).where(Message.conversation_id == ctx.conversation.id,
                                 Message.sender == "agent", Message.created_at >= since)
        .limit(1))
    return found is not None
