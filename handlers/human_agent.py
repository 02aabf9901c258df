from __future__ import annotations

from bot.handoff import request_handoff
from bot.types import Reply
from handlers.base import HandlerContext


class HumanAgentHandler:
    """A person is always possible, in every language, at any point."""

    intent = "human_agent"

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        ctx.end_flow()
        if ctx.conversation.status in ("handed_off", "owned"):
            return [ctx.reply("human.already")]
        hours = ctx.settings.sla.first_response
        return [
            ctx.reply("human.handoff", target=_duration_words(ctx, hours.total_seconds())),
            request_handoff(ctx, "human_agent", priority="urgent" if
                            ctx.understanding.urgent else None),
        ]


def _duration_words(ctx: HandlerContext, seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes % 60 == 0:
        return ctx.text("duration.hours", n=minutes // 60)
    return ctx.text("duration.minutes", n=minutes)
