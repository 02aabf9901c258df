from __future__ import annotations

from typing import Any, ClassVar

from bot.db.models import Order
from bot.handoff import request_handoff
from bot.types import Reply
from handlers.base import FlowMixin, HandlerContext
from handlers.orders import find_order, open_orders

ALL_DOCUMENTS = ("pi", "commercial_invoice", "packing_list", "bl", "certificate_of_origin",
                 "inspection_report")


class DocumentsHandler(FlowMixin):
    """Sends the documents that exist for a linked order; hands off for the others."""

    intent = "documents"
    flow_intents: ClassVar[tuple[str, ...]] = ("documents", "order_status")
    flow_entities: ClassVar[tuple[str, ...]] = ("order_numbers", "emails")

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        wanted = ctx.understanding.entities.get("documents", [])
        numbers = ctx.understanding.entities.get("order_numbers", [])
        if ctx.customer is None:
            from handlers.order_status import OrderStatusHandler

            return await OrderStatusHandler().verify(ctx, {
                "number": numbers[0] if numbers else None, "then": "documents",
                "doc_types": wanted})
        order = await self._order(ctx, numbers[0] if numbers else None)
        if order is None:
            if numbers:
                return [ctx.reply("order.not_found", number=numbers[0])]
            ctx.start_flow(self.intent, {"doc_types": wanted})
            return [ctx.reply("documents.which_order")]
        return await self.send_for(ctx, order, wanted)

    async def resume(self, ctx: HandlerContext) -> list[Reply]:
        state = dict(ctx.conversation.flow_state or {})
        ctx.end_flow()
        numbers = ctx.understanding.entities.get("order_numbers", [])
        if ctx.customer is None or not numbers:
            return [ctx.reply("documents.which_order")]
        order = await find_order(ctx, numbers[0], ctx.customer.id)
        if order is None:
            return [ctx.reply("order.not_found", number=numbers[0])]
        wanted = ctx.understanding.entities.get("documents") or state.get("doc_types") or []
        return await self.send_for(ctx, order, wanted)

    async def _order(self, ctx: HandlerContext, number: str | None) -> Order | None:
        assert ctx.customer is not None
        if number:
            return await find_order(ctx, number, ctx.customer.id)
        orders = await open_orders(ctx, ctx.customer.id)
        return orders[0] if len(orders) == 1 else None

    async def send_for(self, ctx: HandlerContext, order: Order,
                       wanted: list[str]) -> list[Reply]:
        available: dict[str, Any] = dict(order.documents or {})
        wanted = list(wanted) or [d for d in ALL_DOCUMENTS if d in available]
        present = [d for d in wanted if d in available]
        absent = [d for d in wanted if d not in available]
        replies: list[Reply] = []
        if present:
            reply = ctx.reply("documents.sent", number=order.number,
                              documents=", ".join(ctx.text(f"document.{d}") for d in present))
            reply.attachments = [{"type": d, "name": str(available[d])} for d in present]
            replies.append(reply)
        if absent or not wanted:
            names = ", ".join(ctx.text(f"document.{d}") for d in absent) or "—"
            replies.append(ctx.reply("documents.missing", number=order.number, documents=names))
            replies.append(request_handoff(ctx, "documents", documents=", ".join(absent) or "?"))
        return replies
