from __future__ import annotations

from typing import ClassVar

from bot.handoff import request_handoff
from bot.types import Reply
from handlers.base import FlowMixin, HandlerContext
from handlers.cases import open_case
from handlers.orders import find_order
from intents.categories import ComplaintCategorizer

HIGH_PRIORITY = ("quality_defect", "transit_damage", "short_or_wrong_shipment")


class ComplaintHandler(FlowMixin):
    """Listen, record, classify, acknowledge at once with a case number and the promised
    time for a solution, ask for evidence, hand off. Later messages add evidence."""

    intent = "complaint"
    flow_intents: ClassVar[tuple[str, ...]] = ("complaint", "return_refund", "order_status",
                                               "documents")
    flow_entities: ClassVar[tuple[str, ...]] = ("order_numbers",)

    def __init__(self) -> None:
        self.categorizer = ComplaintCategorizer.shared()

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        category = self.categorizer.categorize(ctx.message.text, ctx.lang)
        numbers = ctx.understanding.entities.get("order_numbers", [])
        order = (await find_order(ctx, numbers[0], ctx.customer.id)
                 if numbers and ctx.customer else None)
        priority = "high" if category in HIGH_PRIORITY else "normal"
        case = await open_case(ctx, "complaint", category=category, priority=priority,
                               order=order)
        ctx.start_flow(self.intent, {"case_id": case.id, "have_order": bool(numbers),
                                     "have_photos": bool(ctx.message.attachments)})
        hours = int(ctx.settings.sla.complaint_solution.total_seconds() // 3600)
        key = ("complaint.ack_with_order" if numbers else "complaint.ack")
        return [
            ctx.reply(key, case=case.number, hours=hours,
                      category=ctx.text(f"complaint.category.{category}")),
            request_handoff(ctx, "complaint", priority=priority, case=case,
                            category=category),
        ]

    async def resume(self, ctx: HandlerContext) -> list[Reply]:
        from bot.db.models import Case

        state = dict(ctx.conversation.flow_state or {})
        case = await ctx.session.get(Case, state.get("case_id"))
        if case is None:
            ctx.end_flow()
            return await self.handle(ctx)
        numbers = ctx.understanding.entities.get("order_numbers", [])
        if numbers and case.order_id is None and ctx.customer is not None:
            order = await find_order(ctx, numbers[0], ctx.customer.id)
            if order is not None:
                case.order_id = order.id
        case.evidence = [*(case.evidence or []),
                         {"text": ctx.message.text[:2000], "at": ctx.now.isoformat(),
                          "attachments": list(ctx.message.attachments or [])}]
        ctx.update_flow(have_order=state.get("have_order") or bool(numbers),
                        have_photos=state.get("have_photos") or bool(ctx.message.attachments))
        return [ctx.reply("complaint.evidence_received", case=case.number)]
