"""Opening cases (complaints, returns, technical requests) with a readable number."""

from __future__ import annotations

import uuid

from bot.db.models import Case, Order
from handlers.base import HandlerContext


async def open_case(ctx: HandlerContext, kind: str, *, category: str | None = None,
                    priority: str = "normal", order: Order | None = None) -> Case:
    case = Case(
        number=f"tmp-{uuid.uuid4().hex[:24]}", conversation_id=ctx.conversation.id,
        customer_id=ctx.customer.id if ctx.customer else None,
        order_id=order.id if order else None, kind=kind, category=category, status="open",
        priority=priority, description=ctx.message.text[:4000],
        evidence=list(ctx.message.attachments or []), opened_at=ctx.now,
    )
    ctx.session.add(case)
    await ctx.session.flush()
    case.number = f"CS-{ctx.now:%y%m}-{case.id:05d}"  # the id makes it unique
    await ctx.session.flush()
    return case
