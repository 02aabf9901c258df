from __future__ import annotations

from bot.types import Button, Reply
from handlers.base import HandlerContext

MISSES_BEFORE_HUMAN = 2


class ClarifyHandler:
    """``unknown``: ask one clarifying question with the main options; after a second miss
    in a row, offer a human colleague first."""

    intent = "unknown"

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        ctx.conversation.misses += 1
        if ctx.conversation.misses >= MISSES_BEFORE_HUMAN:
            human = Button(label=ctx.text("button.human_agent"), payload="human_agent")
            others = [b for b in ctx.menu_buttons() if b.payload != "human_agent"]
            return [ctx.reply("clarify_human", kind="clarify", buttons=[human, *others])]
        return [ctx.reply("clarify", kind="clarify", buttons=ctx.menu_buttons())]
