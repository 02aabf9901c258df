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
        return [
            ctx.reply("human.handoff", target=ctx.duration(ctx.settings.sla.first_response)),
            request_handoff(ctx, "human_agent", priority="urgent" if
                            ctx.understanding.urgent else None),
        ]

