from __future__ import annotations

from typing import Any, ClassVar

from bot.types import Button, Reply
from handlers.base import FlowMixin, HandlerContext
from handlers.orders import Verification, find_order, open_orders, order_values


class OrderStatusHandler(FlowMixin):
    """Order status in plain words, shown only to a chat that owns the order."""

    intent = "order_status"
    flow_intents: ClassVar[tuple[str, ...]] = ("order_status", "documents")
    flow_entities: ClassVar[tuple[str, ...]] = ("order_numbers", "emails")

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        numbers = ctx.understanding.entities.get("order_numbers", [])
        if ctx.customer is not None:
            return await self.status_for_customer(ctx, numbers[0] if numbers else None)
        return await self.verify(ctx, {"number": numbers[0] if numbers else None,
                                       "then": "order_status"})

    async def resume(self, ctx: HandlerContext) -> list[Reply]:
        return await self.verify(ctx, dict(ctx.conversation.flow_state or {}))

    async def verify(self, ctx: HandlerContext, state: dict[str, Any]) -> list[Reply]:
        if Verification.locked(ctx):
            ctx.end_flow()
            return [ctx.reply("verify.locked")]
        entities = ctx.understanding.entities
        if entities.get("order_numbers"):
            state["number"] = entities["order_numbers"][0]
        if entities.get("emails"):
            state["email"] = entities["emails"][0]
        if not state.get("number") or not state.get("email"):
            key = ("verify.ask_both" if not state.get("number") and not state.get("email")
                   else "verify.ask_number" if not state.get("number") else "verify.ask_email")
            ctx.start_flow(self.intent, state)
            return [ctx.reply(key)]
        order = await Verification.attempt(ctx, state["number"], state["email"])
        if order is None:
            if Verification.locked(ctx):
                ctx.end_flow()
                return [ctx.reply("verify.locked")]
            ctx.start_flow(self.intent, {"then": state.get("then")})
            return [ctx.reply("verify.failed")]
        ctx.end_flow()
        replies = [ctx.reply("verify.ok", company_name=ctx.customer.company or "")]  # type: ignore[union-attr]
        if state.get("then") == "documents":
            from handlers.documents import DocumentsHandler

            return replies + await DocumentsHandler().send_for(ctx, order,
                                                               state.get("doc_types") or [])
        return [*replies, self.status_reply(ctx, order)]

    async def status_for_customer(self, ctx: HandlerContext, number: str | None) -> list[Reply]:
        assert ctx.customer is not None
        if number:
            order = await find_order(ctx, number, ctx.customer.id)
            if order is None:  # not theirs, or no such order: the same answer
                return [ctx.reply("order.not_found", number=number)]
            return [self.status_reply(ctx, order)]
        orders = await open_orders(ctx, ctx.customer.id)
        if not orders:
            return [ctx.reply("order.none")]
        if len(orders) == 1:
            return [self.status_reply(ctx, orders[0])]
        buttons = [Button(label=o.number, payload=f"order_status {o.number}") for o in orders[:8]]
        return [ctx.reply("order.which", numbers=", ".join(o.number for o in orders),
                          buttons=buttons)]

    def status_reply(self, ctx: HandlerContext, order: Any) -> Reply:
        return ctx.reply(f"order.stage.{order.stage}", **order_values(order))
