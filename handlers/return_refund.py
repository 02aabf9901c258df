from __future__ import annotations

from bot.handoff import request_handoff
from bot.types import Reply
from handlers.base import HandlerContext
from handlers.cases import open_case
from handlers.orders import find_order

INSPECTION_WORKING_DAYS = 3


class ReturnRefundHandler:
    """Explains the return policy, opens a case and promises the inspection in time."""

    intent = "return_refund"

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        numbers = ctx.understanding.entities.get("order_numbers", [])
        order = (await find_order(ctx, numbers[0], ctx.customer.id)
                 if numbers and ctx.customer else None)
        case = await open_case(ctx, "return", category="return_refund", priority="normal",
                               order=order)
        return [
            ctx.reply("return.policy"),
            ctx.reply("return.opened", case=case.number, days=INSPECTION_WORKING_DAYS),
            request_handoff(ctx, "return_refund", case=case),
        ]
