from __future__ import annotations

from bot.types import Reply
from handlers.base import HandlerContext


class FallbackHandler:
    """Answers what the bot did not understand: a polite apology and what it can help with."""

    intent = "unknown"

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        return [ctx.reply("fallback", buttons=ctx.menu_buttons())]
