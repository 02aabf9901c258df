"""Product and technical questions answered from the FAQ, searched fuzzily in the
customer's language; the bot says honestly when it has no answer and passes it on."""

from __future__ import annotations

from bot.handoff import request_handoff
from bot.types import Reply
from handlers.base import HandlerContext
from handlers.cases import open_case


async def faq_answer(ctx: HandlerContext, topic: str) -> Reply | None:
    entry = ctx.knowledge.faq.search(ctx.message.text, ctx.lang, topic)
    if entry is None:
        return None
    return ctx.reply("faq.answer", answer=entry.answer)


class ProductInfoHandler:
    intent = "product_info"

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        answer = await faq_answer(ctx, "product_info")
        if answer is not None:
            return [answer]
        return [ctx.reply("faq.no_answer"), request_handoff(ctx, "product_info")]


class TechnicalSupportHandler:
    """Installation and click-lock questions: the FAQ first, else remote contact in time."""

    intent = "technical_support"

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        answer = await faq_answer(ctx, "technical_support")
        if answer is not None:
            return [answer, ctx.reply("tech.more_help", buttons=ctx.menu_buttons("human_agent"))]
        case = await open_case(ctx, "technical", category="technical_support")
        target = ctx.settings.sla.technical_contact
        return [ctx.reply("tech.handoff", case=case.number, target=ctx.duration(target)),
                # the agents' card is in the agents' language, not the customer's
                request_handoff(ctx, "technical_support", case=case,
                                target=f"{target.total_seconds() / 3600:g} h")]
