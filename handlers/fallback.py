from __future__ import annotations

from bot.types import Reply
from handlers.base import HandlerContext


class FallbackHandler:
    """For a recognised intent that has no handler of its own in this deployment: an
    honest, polite answer that lists what the bot can do."""

    intent = "fallback"

    async def handle(self, ctx: HandlerContext) -> list[Reply]:
        return [ctx.reply("fallback", buttons=ctx.menu_buttons())]
