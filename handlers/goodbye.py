from __future__ import annotations

from bot.types import Reply
from handlers.base import HandlerContext


class GoodbyeHandler:
    intent = "goodbye"

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        return [ctx.reply("goodbye")]
