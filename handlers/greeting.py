from __future__ import annotations

from bot.types import Reply
from handlers.base import HandlerContext


class GreetingHandler:
    intent = "greeting"

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        return [ctx.reply("greeting", buttons=ctx.menu_buttons())]
