"""Finding a customer's orders, and proving that a chat belongs to an order's customer.

An order is shown only to a chat linked to the order's customer. An unlinked chat proves
ownership with the order number plus the e-mail on the order; then it is linked. Failed
tries are counted per chat and lock further tries for a while. Every answer to an
unverified chat is the same whether the order exists or not, so nothing leaks.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from sqlalchemy import select

from bot.db.models import Customer, Order
from handlers.base import HandlerContext

OPEN_STAGES = ("confirmed", "in_production", "inspection", "booked", "shipped", "arrived")


def digits(number: str) -> str:
    return re.sub(r"\D", "", number)


async def find_order(ctx: HandlerContext, number: str, customer_id: int | None = None) -> Order | None:
    """The order whose number matches (``PO-24117``, ``24117`` and ``po 24117`` are one)."""
    wanted = digits(number)
    if not wanted:
        return None
    query = select(Order).where(Order.number.like(f"%{wanted}"))
    if customer_id is not None:
        query = query.where(Order.customer_id == customer_id)
    for order in (await ctx.session.execute(query)).scalars():
        if digits(order.number) == wanted:
            return order
    return None


async def open_orders(ctx: HandlerContext, customer_id: int) -> list[Order]:
    return list((await ctx.session.execute(
        select(Order).where(Order.customer_id == customer_id, Order.stage.in_(OPEN_STAGES))
        .order_by(Order.etd.is_(None), Order.etd, Order.number)
    )).scalars())


def _date(value: date | None) -> str:
    return value.isoformat() if value else "—"


def order_values(order: Order) -> dict[str, Any]:
    inspection = order.inspection or {}
    inspector = inspection.get("inspector") or inspection.get("by") or ""
    result = inspection.get("result") or inspection.get("status") or ""
    return {
        "number": order.number, "product": order.product or "—",
        "quantity": f"{order.quantity_m2.normalize():f}" if order.quantity_m2 is not None else "—",
        "incoterm": order.incoterm or "—", "destination": order.destination or "—",
        "progress": order.progress if order.progress is not None else "—",
        "etd": _date(order.etd), "eta": _date(order.eta), "vessel": order.vessel or "—",
        "bl_number": order.bl_number or "—",
        "inspection": " ".join(part for part in (inspector, result) if part) or "—",
    }


class Verification:
    """The ownership proof, as a flow step any handler can ask for."""

    @staticmethod
    def locked(ctx: HandlerContext) -> bool:
        until = ctx.contact.verify_locked_until
        return until is not None and until > ctx.now

    @staticmethod
    async def attempt(ctx: HandlerContext, number: str, email: str) -> Order | None:
        """Check order number + e-mail; link the chat on success, count a failure otherwise."""
        order = await find_order(ctx, number)
        customer = await ctx.session.get(Customer, order.customer_id) if order else None
        if (order is not None and customer is not None and customer.email
                and customer.email.strip().lower() == email.strip().lower()
                and customer.erased_at is None):
            ctx.contact.customer_id = customer.id
            ctx.contact.verify_failures = 0
            ctx.contact.verify_locked_until = None
            ctx.conversation.customer_id = customer.id
            ctx.customer = customer
            return order
        ctx.contact.verify_failures += 1
        if ctx.contact.verify_failures >= ctx.settings.flows.verify_attempts:
            ctx.contact.verify_locked_until = ctx.now + ctx.settings.flows.verify_lock
            ctx.contact.verify_failures = 0
        return None
